#!/usr/bin/env python3
# A naive Helix stand-in, as someone might write one from Twitch's docs: plain
# HTTP/1.1, Python's ThreadingHTTPServer (listen backlog 5, a thread per
# connection), 50 ms per answer, 20% of the asked channels live. Not a test
# dependency: BENCHMARKS.md ("third session") uses it to show why run() paces
# new connections. Usage: naive-helix-standin.py PORT [LATENCY_SECONDS]
# (token at /oauth2/token, Get Streams at /helix/streams).
import json, time, sys, random
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from urllib.parse import urlparse, parse_qs
LAT = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
random.seed(7)
LIVE = {}
def live(uid):
    if uid not in LIVE:
        LIVE[uid] = random.random() < 0.2
    return LIVE[uid]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def send(self, code, obj):
        b = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.send_header("Ratelimit-Limit", "800")
        self.send_header("Ratelimit-Remaining", "799")
        self.send_header("Ratelimit-Reset", str(int(time.time()) + 1))
        self.end_headers()
        self.wfile.write(b)
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        time.sleep(LAT)
        self.send(200, {"access_token": "tok" + "x" * 27, "expires_in": 5011271, "token_type": "bearer"})
    def do_GET(self):
        time.sleep(LAT)
        u = urlparse(self.path)
        q = parse_qs(u.query)
        if u.path.endswith("/validate"):
            return self.send(200, {"client_id": "c", "scopes": [], "expires_in": 5011271})
        data = []
        for uid in q.get("user_id", []):
            if live(uid):
                data.append({"id": str(40000000000 + int(uid)), "user_id": uid, "user_login": "u" + uid,
                             "user_name": "U" + uid, "game_id": "509658", "game_name": "Just Chatting",
                             "type": "live", "title": "hello", "tags": [], "viewer_count": random.randint(1, 5000),
                             "started_at": "2026-11-26T06:00:00Z", "language": "en",
                             "thumbnail_url": "https://x/{width}x{height}.jpg", "tag_ids": [], "is_mature": False})
        self.send(200, {"data": data, "pagination": {}})
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
