// @vitest-environment node
/// <reference types="node" />
// The console's API types are generated from the control plane's OpenAPI
// document; this fails when either changed without `npm run api:types`.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const web = fileURLToPath(new URL('..', import.meta.url))

describe('generated API types', () => {
  it('match controlplane/openapi.json', () => {
    const out = join(mkdtempSync(join(tmpdir(), 'aiproxy-types-')), 'schema.d.ts')
    execFileSync(
      join(web, 'node_modules', '.bin', 'openapi-typescript'),
      [join(web, '..', 'controlplane', 'openapi.json'), '-o', out],
      { stdio: 'ignore' },
    )
    const committed = readFileSync(join(web, 'src', 'api', 'schema.d.ts'), 'utf8')
    expect(readFileSync(out, 'utf8') === committed, 'run `npm run api:types` in web/').toBe(true)
  }, 30_000)
})
