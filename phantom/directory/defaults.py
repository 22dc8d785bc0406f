"""The directory's defaults that ``phantom directory ... --help`` shows.

Defined here, with no imports, so that building the command line's parser
imports neither the server (aiohttp's web side) nor the client (asyncio):
server.py, client.py and store/base.py take them from here and keep
exporting them under the same names.
"""

# the service (server.py)
DEFAULT_PORT = 4568
DEFAULT_DB = "phantom-directory.sqlite"
WATCHERS_MAX = 1024                   # concurrent watch streams per front end
WATCH_HEARTBEAT = 15.0
MAX_HEARTBEAT = 30.0                  # clients redo a stream silent for 40 s (WATCH_READ)
# per-source limits (a source is the client's address; IPv6 by /64).  0 turns one off.
SOURCE_WRITES = 60                    # PUT/POST per source per minute (a bucket of 60)
KEY_WRITES = 12                       # writes of one key's record per minute (a bucket of 12)
SOURCE_QUOTA = 256                    # records (and kept revocations) stored per source
SOURCE_WATCHES = 16                   # concurrent watch streams per source

# the stores (store/base.py)
DEFAULT_MAX_TTL = 30 * 86400          # the server refuses records that live longer

# the client (client.py)
DEFAULT_TTL = 3600                    # a published record lives this long; republish at half
CLIENT_TIMEOUT = 5.0
DHT_TIMEOUT = 10.0                    # a DHT lookup or publish gives up after this
