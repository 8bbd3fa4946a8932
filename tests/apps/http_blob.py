#!/usr/bin/env python3
"""HTTP server for tarp's transfer tests: GET / returns FILE's bytes; POST / reads the
body and answers with its SHA-256 (hex). Stops after --lifetime seconds."""
import argparse, hashlib, http.server, socket, threading, time

p = argparse.ArgumentParser()
p.add_argument("addr")
p.add_argument("port", type=int)
p.add_argument("file")
p.add_argument("--lifetime", type=float, default=600)
a = p.parse_args()
blob = open(a.file, "rb").read()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(blob)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.wfile.write(blob)

    def do_POST(self):
        left = int(self.headers.get("Content-Length", "0"))
        h = hashlib.sha256()
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        body = h.hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print(f"{self.client_address[0]} {fmt % args}", flush=True)


class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in a.addr else socket.AF_INET


srv = Server((a.addr, a.port), Handler)
threading.Thread(target=srv.serve_forever, daemon=True).start()
time.sleep(a.lifetime)
srv.shutdown()
