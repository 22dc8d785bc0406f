#!/usr/bin/env python3
"""Fuzz target "directory": the record parser and verifier.

Input: byte 0 = flags (bit 0: re-sign the document with the corpus key
before verifying, so that mutated fields get past the signature check to the
expiry, endorsement and Record-building code; bit 1: strict endorsements, as
the server parses; bit 2: trust only the corpus signer), then a JSON document.

Contract (phantom/directory/records.py): ``strict_loads`` returns a value or
raises ValueError; ``parse_record`` returns a Record or raises RecordError,
for any JSON value; a Record's summary() works and its document parses again
to the same Record.
"""

import sys

import atheris

import common

with atheris.instrument_imports(include=["phantom", "ipaddress", "json"]):   # not aiohttp & co.
    from phantom import directory as d

ALLOWED = (d.RecordError,)
SIGNER = d.NodeSigner(common.INITIATOR_PRIV)
ENDORSER = d.NodeSigner(common.SIGNER_PRIV)


def resign(doc):
    if not isinstance(doc, dict):
        return doc
    doc = dict(doc)
    doc["public_key"] = d.b64(SIGNER.public_key)
    doc["signing_key"] = d.b64(SIGNER.signing_key)
    doc.pop("sig", None)
    try:
        doc["sig"] = d.b64(SIGNER.sign(d.record_signed_bytes(doc)))
    except (TypeError, ValueError):          # not JSON-serialisable: cannot be signed
        pass
    return doc


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    flags = data[0]
    try:
        doc = d.strict_loads(data[1:])
    except ValueError:          # includes UnicodeDecodeError and JSONDecodeError
        return
    if flags & 1:
        doc = resign(doc)
    trusted = [ENDORSER.signing_key] if flags & 4 else None
    try:
        rec = d.parse_record(doc, common.NOW, trusted_signers=trusted,
                             strict_endorsements=bool(flags & 2))
    except ALLOWED:
        return
    assert isinstance(rec, d.Record)
    rec.summary()
    again = d.parse_record(d.strict_loads(d.canonical(rec.doc)), common.NOW, trusted_signers=trusted,
                           strict_endorsements=bool(flags & 2))
    assert again == rec, "a verified record does not verify the same again"


if __name__ == "__main__":
    common.main(TestOneInput)
