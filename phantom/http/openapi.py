"""OpenAPI 3 descriptions assembled from route parts.

A part (a module that adds routes to an app, see :mod:`phantom.http.app`)
describes its own routes with :func:`openapi_paths` and may add schemas with
:func:`openapi_schemas`; :func:`document` puts them in one document.  The
helpers here word the answers every part shares.
"""

from __future__ import annotations


def err(description: str) -> dict:
    """An error answer: ``{"error": message}``."""
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def ok(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def page(description: str, media: str) -> dict:
    """A non-JSON answer (an HTML page, a script, metrics text)."""
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


COMMON_ERRORS = {"403": err("Host header not allowed"), "500": err("internal error")}
MUTATION_ERRORS = dict(COMMON_ERRORS, **{
    "400": err("malformed request: endpoint, peer name or body"),
    "401": err("missing or wrong bearer token"),
    "408": err("request body not received in time"),
    "413": err("request body larger than 64 KiB"),
})
OBJ = {"type": "object", "additionalProperties": True}



def operation(summary: str, operation_id: str, responses: dict, *, mutation: bool = False,
              **fields) -> dict:
    """One operation.  A ``mutation`` changes state: it needs the bearer token
    and may answer MUTATION_ERRORS; any other may answer COMMON_ERRORS; both
    besides ``responses``.  ``fields``: the operation's other fields
    (parameters, requestBody, security), in order."""
    op = {"summary": summary, "operationId": operation_id}
    if mutation:
        op["security"] = [{"bearer": []}]
    op.update(fields)
    op["responses"] = dict(MUTATION_ERRORS if mutation else COMMON_ERRORS, **responses)
    return op


def in_path(name: str, **schema_and_example) -> list:
    """The parameters of a route with one path parameter, ``name`` (a string);
    ``example``, or other schema keywords (``enum``)."""
    example = schema_and_example.pop("example", None)
    param = {"name": name, "in": "path", "required": True,
             "schema": dict({"type": "string"}, **schema_and_example)}
    if example is not None:
        param["example"] = example
    return [param]


def json_body(schema: dict, required: bool = True) -> dict:
    """A JSON request body of ``schema``."""
    return {"required": required, "content": {"application/json": {"schema": schema}}}

def document(parts, *, title: str, version: str, description: str, servers: list) -> dict:
    """One OpenAPI 3 document for the routes of ``parts``, in their order."""
    doc: dict = {
        "openapi": "3.0.3",
        "info": {"title": title, "version": version, "description": description},
        "servers": servers,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error"],
                                  "properties": {"error": {"type": "string"}}}},
        },
        "paths": {},
    }
    for part in parts:
        schemas = getattr(part, "openapi_schemas", None)
        if schemas is not None:
            doc["components"]["schemas"].update(schemas())
        doc["paths"].update(part.openapi_paths())
    return doc
