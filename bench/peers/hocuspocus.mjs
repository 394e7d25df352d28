// Hocuspocus with no extensions (no persistence), for the benchmark harness.
// Usage: HOST=127.0.0.1 PORT=1234 node hocuspocus.mjs [PACKAGE]
// PACKAGE is `@hocuspocus/server` (3.x, the default) or `hocuspocus4` (the
// 4.x alias in package.json, which needs Node 22): both versions sit side
// by side so one script serves either.
//
// 3.x's Server.listen() passes `address` to http.Server.listen, which
// ignores it (Node reads `host`) and so binds every interface. The
// benchmark must stay on loopback, so the HTTP server is started here
// directly; Server's constructor has already attached its request and
// upgrade handlers (in 3.x and 4.x alike).
const pkg = process.argv[2] || '@hocuspocus/server'
const { Server } = await import(pkg)

const host = process.env.HOST || '127.0.0.1'
const port = Number.parseInt(process.env.PORT || '1234', 10)

const server = new Server({ quiet: true, stopOnSignals: false })

server.httpServer.listen(port, host, () => {
  console.log(`${pkg} on node ${process.version} at ${host}:${port}`)
})

const stop = async () => {
  await server.destroy()
  process.exit(0)
}
process.on('SIGINT', stop)
process.on('SIGTERM', stop)
