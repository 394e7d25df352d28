// Builds the page crdt-hub serves at `/` into dist/: index.html, app.js and
// app.css (minified), plus gzip copies of the two assets that the server
// sends to browsers that accept gzip. The asset URLs in index.html carry a
// content hash (`?v=…`), so the server can let browsers cache them for good.
//
//   npm ci && npm run build
//
// dist/ is committed: the server embeds it with include_bytes!, so running
// crdt-hub never needs npm.

import { createHash } from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { gzipSync, constants as zlib } from 'node:zlib'
import * as esbuild from 'esbuild'

const here = path.dirname(fileURLToPath(import.meta.url))
const src = path.join(here, 'src')
const dist = path.join(here, 'dist')

const hash = bytes => createHash('sha256').update(bytes).digest('hex').slice(0, 16)
const gzip = bytes => gzipSync(bytes, { level: zlib.Z_BEST_COMPRESSION })
const kib = n => `${(n / 1024).toFixed(1)} KiB`

await fs.rm(dist, { recursive: true, force: true })
await fs.mkdir(dist, { recursive: true })

const result = await esbuild.build({
  entryPoints: { app: path.join(src, 'main.js') },
  outdir: dist,
  bundle: true,
  minify: true,
  format: 'iife',
  target: 'es2020',
  legalComments: 'none',
  charset: 'utf8',
  metafile: true,
  write: false,
  logLevel: 'warning'
})

const files = {}
for (const file of result.outputFiles) files[path.basename(file.path)] = file.contents
const js = files['app.js']
const css = files['app.css']
if (!js || !css) throw new Error(`esbuild produced ${Object.keys(files).join(', ')}, expected app.js and app.css`)

const template = await fs.readFile(path.join(src, 'index.html'), 'utf8')
const html = template
  .replace('%APP_JS%', `/assets/app.js?v=${hash(js)}`)
  .replace('%APP_CSS%', `/assets/app.css?v=${hash(css)}`)
  // Whitespace between tags carries no meaning in this document.
  .replace(/>\s+</g, '><')
  .trim() + '\n'
if (html.includes('%APP_')) throw new Error('index.html: a placeholder was not replaced')

const outputs = {
  'index.html': Buffer.from(html),
  'app.js': js,
  'app.js.gz': gzip(js),
  'app.css': css,
  'app.css.gz': gzip(css)
}
for (const [name, bytes] of Object.entries(outputs)) {
  await fs.writeFile(path.join(dist, name), bytes)
}

for (const [name, bytes] of Object.entries(outputs)) {
  console.log(`${name.padEnd(12)} ${kib(bytes.length).padStart(10)}`)
}
if (process.argv.includes('--analyze')) {
  console.log(await esbuild.analyzeMetafile(result.metafile))
}
