// Builds the pages crdt-hub serves into dist/: the plain-text editor at `/`
// (index.html, app.js, app.css) and the rich-text one at `/rich`
// (rich.html, rich.js, rich.css), minified, plus gzip copies of the assets
// that the server sends to browsers that accept gzip. The asset URLs in the
// pages carry a content hash (`?v=…`), so the server can let browsers cache
// them for good. Each page is its own bundle (no shared chunks): a page
// loads exactly one script and one stylesheet.
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
  entryPoints: { app: path.join(src, 'main.js'), rich: path.join(src, 'rich', 'main.js') },
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

/** A page: its template in src/, its bundle's name, and the file it becomes. */
const PAGES = [
  { template: 'index.html', bundle: 'app', out: 'index.html' },
  { template: 'rich.html', bundle: 'rich', out: 'rich.html' }
]

const outputs = {}
for (const { template, bundle, out } of PAGES) {
  const js = files[`${bundle}.js`]
  const css = files[`${bundle}.css`]
  if (!js || !css) throw new Error(`esbuild produced ${Object.keys(files).join(', ')}, expected ${bundle}.js and ${bundle}.css`)
  const placeholder = bundle.toUpperCase()
  const html = (await fs.readFile(path.join(src, template), 'utf8'))
    .replace(`%${placeholder}_JS%`, `/assets/${bundle}.js?v=${hash(js)}`)
    .replace(`%${placeholder}_CSS%`, `/assets/${bundle}.css?v=${hash(css)}`)
    // Whitespace between tags carries no meaning in this document.
    .replace(/>\s+</g, '><')
    .trim() + '\n'
  if (/%[A-Z]+_(JS|CSS)%/.test(html)) throw new Error(`${template}: a placeholder was not replaced`)
  Object.assign(outputs, {
    [out]: Buffer.from(html),
    [`${bundle}.js`]: js,
    [`${bundle}.js.gz`]: gzip(js),
    [`${bundle}.css`]: css,
    [`${bundle}.css.gz`]: gzip(css)
  })
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
