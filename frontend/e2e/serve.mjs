// One origin for the built dashboard and a running EduAiQ server, for tests and local preview:
// /api, /auth, /v1, /healthz, /readyz, /metrics go to the server; /assets/* and other files come
// from dist/; any other path gets index.html (the SPA routes it). This is exactly what the admin
// API must do once it serves frontend/dist itself.
//
//   node e2e/serve.mjs --backend http://127.0.0.1:8000 --port 8080 [--dist dist]
import { createReadStream, existsSync, statSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const BACKEND_PREFIXES = ["/api", "/auth", "/v1", "/healthz", "/readyz", "/metrics"];
const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".json": "application/json",
  ".woff2": "font/woff2",
};

export function isBackendPath(p) {
  return BACKEND_PREFIXES.some((x) => p === x || p.startsWith(`${x}/`));
}

export function startServer({ backend, port = 0, host = "127.0.0.1", dist }) {
  const target = new URL(backend);
  const root = path.resolve(dist);
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    if (isBackendPath(url.pathname)) {
      const upstream = http.request(
        {
          host: target.hostname,
          port: target.port,
          method: req.method,
          path: req.url,
          // The server checks Origin against its public URL (CSRF): present this origin as the server's.
          headers: {
            ...req.headers,
            host: target.host,
            ...(req.headers.origin ? { origin: target.origin } : {}),
            ...(req.headers.referer ? { referer: target.origin + new URL(req.headers.referer).pathname } : {}),
          },
        },
        (up) => {
          res.writeHead(up.statusCode ?? 502, up.headers);
          up.pipe(res);
        },
      );
      upstream.on("error", (e) => {
        res.writeHead(502, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: { code: "bad_gateway", message: String(e) } }));
      });
      req.pipe(upstream);
      return;
    }
    let file = path.join(root, decodeURIComponent(url.pathname));
    if (!file.startsWith(root) || !existsSync(file) || statSync(file).isDirectory()) file = path.join(root, "index.html");
    const ext = path.extname(file);
    const immutable = url.pathname.startsWith("/assets/");
    res.writeHead(200, {
      "content-type": TYPES[ext] ?? "application/octet-stream",
      "cache-control": immutable ? "public, max-age=31536000, immutable" : "no-cache",
    });
    createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(port, host, () => resolve(server)));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const arg = (name, dflt) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : dflt;
  };
  const here = path.dirname(fileURLToPath(import.meta.url));
  const server = await startServer({
    backend: arg("backend", "http://127.0.0.1:8000"),
    port: Number(arg("port", "8080")),
    dist: arg("dist", path.join(here, "..", "dist")),
  });
  console.log(`serving on http://127.0.0.1:${server.address().port}`);
}
