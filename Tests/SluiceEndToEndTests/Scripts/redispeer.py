#!/usr/bin/env python3
"""redis-py clients for the end-to-end tests.

  redispeer.py load PORT CLIENTS ROUNDS   each client writes checksummed random
                                          values under its own keys and reads
                                          them back (single commands, MSET/MGET
                                          and a pipeline): prints a JSON summary
"""
import hashlib
import json
import random
import sys
import threading

import redis


def load(port, clients, rounds):
    results = {"ok": 0, "bad": 0, "failed": 0}
    lock = threading.Lock()

    def one(k):
        rng = random.Random(k)
        # RESP2: redis-py 8 asks for RESP3 by default (HELLO 3), which the proxy refuses.
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10, protocol=2)
        try:
            for n in range(rounds):
                value = rng.randbytes(rng.randint(1, 4096))
                tagged = hashlib.sha256(value).hexdigest().encode() + b":" + value
                r.set(f"c{k}:n{n}", tagged)
                back = r.get(f"c{k}:n{n}")
                keys = [f"c{k}:m{n}:{i}" for i in range(8)]
                r.mset({key: tagged for key in keys})
                many = r.mget(keys)
                pipe = r.pipeline(transaction=False)
                for key in keys:
                    pipe.get(key)
                piped = pipe.execute()
                good = all(v == tagged for v in [back] + many + piped)
                digest, _, body = tagged.partition(b":")
                if not good or hashlib.sha256(body).hexdigest().encode() != digest:
                    with lock:
                        results["bad"] += 1
                    return
            with lock:
                results["ok"] += 1
        except Exception as error:
            with lock:
                results["failed"] += 1
                results.setdefault("error", repr(error))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    if sys.argv[1] == "load":
        load(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(__doc__)
