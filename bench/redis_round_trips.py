"""Read a gateway's Prometheus text on stdin; print one bench result line, for the target named
by the first argument (default limits-redis), with the Redis round trips per proxied Messages
request (`rampart_limits_redis_round_trips_total` over
`rampart_http_requests_total{route="/v1/messages"}`)."""
import json
import re
import sys

text = sys.stdin.read()


def total(name, label):
    return sum(float(v) for v in re.findall(r"^" + name + r"\{[^}]*" + label + r"[^}]*\} (\S+)$", text, re.M))


trips = total("rampart_limits_redis_round_trips_total", 'op="(?:admit|settle)"')
requests = total("rampart_http_requests_total", 'route="/v1/messages"')
target = sys.argv[1] if len(sys.argv) > 1 else "limits-redis"
print(json.dumps({"target": target, "mode": "redis_round_trips", "per_request": trips / max(requests, 1), "requests": requests}))
