"""moto's S3 server with conditional puts made atomic, as S3's are.

moto 5.2.1 checks `If-None-Match: *` and then stores the object without a lock, and its
server is threaded: two concurrent creates of the same key (two writers racing to commit
version 1 of a Lance table) could both succeed, the second overwriting the first, which
real S3 never allows. One lock around the put makes the check and the write one step.

    python3 -c "$(cat moto_server.py)" -H 127.0.0.1 -p PORT
"""

import sys
import threading

from moto import server
from moto.s3.responses import S3Response

_put_object = S3Response.put_object
_one_put_at_a_time = threading.Lock()


def put_object(self):
    with _one_put_at_a_time:
        return _put_object(self)


S3Response.put_object = put_object
server.main(sys.argv[1:])
