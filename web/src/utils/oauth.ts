// Reading the authorization code out of what a person pastes after signing in:
// Claude's "code#state", an OpenAI (or any) callback URL, a bare query string, or the bare code.

export interface PastedCode {
  code: string
  /** The state found next to the code, when there was one. */
  state: string | null
}

function fromParams(params: URLSearchParams): PastedCode | null {
  const code = params.get('code')?.trim()
  if (!code) return null
  const state = params.get('state')?.trim() || null
  return { code, state }
}

/** The code (and state) in pasted text, or null when there is none. */
export function extractOAuthCode(input: string): PastedCode | null {
  let text = input.trim().replace(/^['"<]+|['">]+$/g, '').trim()
  if (!text) return null
  if (/(^|[?&#])code=/.test(text)) {
    // A callback URL (with or without scheme) or a query string.
    let search = ''
    let hash = ''
    try {
      const url = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `http://x/${text.replace(/^\/+/, '')}`)
      search = url.search
      hash = url.hash
    } catch {
      search = text.slice(text.indexOf('?') + 1)
    }
    const found = fromParams(new URLSearchParams(search)) ?? fromParams(new URLSearchParams(hash.replace(/^#/, '')))
    if (found) return found
    const bare = fromParams(new URLSearchParams(text.replace(/^[^?]*\?/, '')))
    if (bare) return bare
  }
  text = text.replace(/\s+/g, '')
  const hashAt = text.indexOf('#')
  if (hashAt >= 0) {
    const code = text.slice(0, hashAt)
    const state = text.slice(hashAt + 1) || null
    return code ? { code, state } : null
  }
  return { code: text, state: null }
}

/** Whether the pasted code belongs to this authorization (no state pasted is fine). */
export function stateMatches(pasted: PastedCode, expected: string): boolean {
  return pasted.state === null || pasted.state === expected
}
