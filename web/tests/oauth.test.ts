// Reading the OAuth code from what a person pastes.
import { describe, expect, it } from 'vitest'
import { extractOAuthCode, stateMatches } from '@/utils/oauth'

describe('extractOAuthCode', () => {
  it("splits Claude's code#state", () => {
    expect(extractOAuthCode('abc123XYZ#st-456')).toEqual({ code: 'abc123XYZ', state: 'st-456' })
  })

  it('trims whitespace, newlines and quotes', () => {
    expect(extractOAuthCode('  "abc123#st"\n')).toEqual({ code: 'abc123', state: 'st' })
    expect(extractOAuthCode('abc\n123')).toEqual({ code: 'abc123', state: null })
  })

  it('takes a bare code', () => {
    expect(extractOAuthCode('ac_9f8e7d')).toEqual({ code: 'ac_9f8e7d', state: null })
  })

  it('reads code and state from an OpenAI callback URL', () => {
    const url = 'http://localhost:1455/auth/callback?code=ac_abc%2Fdef&scope=openid+profile&state=s123'
    expect(extractOAuthCode(url)).toEqual({ code: 'ac_abc/def', state: 's123' })
  })

  it('reads a callback URL without its scheme, or just the query', () => {
    expect(extractOAuthCode('localhost:1455/auth/callback?code=c1&state=s1')).toEqual({ code: 'c1', state: 's1' })
    expect(extractOAuthCode('?code=c2&state=s2')).toEqual({ code: 'c2', state: 's2' })
    expect(extractOAuthCode('code=c3&state=s3')).toEqual({ code: 'c3', state: 's3' })
  })

  it('reads a Claude callback URL, and a code in the fragment', () => {
    expect(extractOAuthCode('https://console.anthropic.com/oauth/code/callback?code=cc&state=ss')).toEqual({ code: 'cc', state: 'ss' })
    expect(extractOAuthCode('https://example.com/cb#code=fc&state=fs')).toEqual({ code: 'fc', state: 'fs' })
  })

  it('returns null for nothing', () => {
    expect(extractOAuthCode('')).toBeNull()
    expect(extractOAuthCode('   ')).toBeNull()
    expect(extractOAuthCode('#state-only')).toBeNull()
  })

  it('checks the state against the authorization', () => {
    expect(stateMatches({ code: 'c', state: 's' }, 's')).toBe(true)
    expect(stateMatches({ code: 'c', state: 'other' }, 's')).toBe(false)
    expect(stateMatches({ code: 'c', state: null }, 's')).toBe(true)
  })
})
