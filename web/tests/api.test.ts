// The API client: bearer header, query strings, error normalisation, 401 handling, downloads.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { ApiError, buildQuery, configureClient, request, requestBlob } from '@/api/http'
import { changePassword, login } from '@/api/auth'
import { passwordProblem } from '@/utils/password'
import { listRequestLogs, exportRequestLogs } from '@/api/logs'
import { clearSessions } from '@/api/cache'

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(body === undefined ? null : JSON.stringify(body), {
    status,
    headers: { 'content-type': 'application/json', ...headers },
  })
}

let fetchMock: ReturnType<typeof vi.fn>
let onUnauthorized: ReturnType<typeof vi.fn<(message: string) => void>>
let token: string | null

/** The ApiError a call fails with. */
async function failure(p: Promise<unknown>): Promise<ApiError> {
  try {
    await p
  } catch (e) {
    if (e instanceof ApiError) return e
    throw e
  }
  throw new Error('expected the call to fail')
}

beforeEach(() => {
  token = 'tok-123'
  fetchMock = vi.fn()
  onUnauthorized = vi.fn<(message: string) => void>()
  configureClient({ fetch: fetchMock as unknown as typeof fetch, getToken: () => token, onUnauthorized })
})

afterEach(() => {
  configureClient({ getToken: () => null, onUnauthorized: () => {} })
})

describe('request', () => {
  it('sends the bearer token and parses JSON', async () => {
    fetchMock.mockResolvedValue(json(200, { id: 1, username: 'admin' }))
    const me = await request<{ username: string }>('/me')
    expect(me.username).toBe('admin')
    const [url, init] = fetchMock.mock.calls[0]
    expect(url).toBe('/api/v1/me')
    expect(init.headers.authorization).toBe('Bearer tok-123')
    expect(init.method).toBe('GET')
  })

  it('sends no authorization header without a token', async () => {
    token = null
    fetchMock.mockResolvedValue(json(200, {}))
    await request('/me')
    expect(fetchMock.mock.calls[0][1].headers.authorization).toBeUndefined()
  })

  it('sends JSON bodies with a content type', async () => {
    fetchMock.mockResolvedValue(json(201, { id: 9 }))
    await request('/users', { method: 'POST', body: { username: 'alice' } })
    const init = fetchMock.mock.calls[0][1]
    expect(init.method).toBe('POST')
    expect(init.headers['content-type']).toBe('application/json')
    expect(JSON.parse(init.body)).toEqual({ username: 'alice' })
  })

  it('returns undefined for 204', async () => {
    fetchMock.mockResolvedValue(new Response(null, { status: 204 }))
    await expect(request('/users/3', { method: 'DELETE' })).resolves.toBeUndefined()
  })

  it('normalises the API error shape', async () => {
    fetchMock.mockResolvedValue(json(400, { error: { code: 'bad_request', message: 'weight must be between 1 and 1000' } }))
    const err = await failure(request('/accounts', { method: 'POST', body: {} }))
    expect(err).toBeInstanceOf(ApiError)
    expect(err.status).toBe(400)
    expect(err.code).toBe('bad_request')
    expect(err.message).toBe('weight must be between 1 and 1000')
    expect(onUnauthorized).not.toHaveBeenCalled()
  })

  it('normalises a non-JSON error page', async () => {
    fetchMock.mockResolvedValue(new Response('<html>502 Bad Gateway</html>\nnginx', { status: 502, statusText: 'Bad Gateway' }))
    const err = await failure(request('/me'))
    expect(err).toBeInstanceOf(ApiError)
    expect(err.status).toBe(502)
    expect(err.code).toBe('internal')
    expect(err.message).toBe('<html>502 Bad Gateway</html>')
  })

  it('normalises an empty error body', async () => {
    fetchMock.mockResolvedValue(new Response('', { status: 503, statusText: 'Service Unavailable' }))
    const err = await failure(request('/cache/sessions'))
    expect(err.code).toBe('unavailable')
    expect(err.message).toBe('503 Service Unavailable')
  })

  it('turns a network failure into an ApiError with status 0', async () => {
    fetchMock.mockRejectedValue(new TypeError('Failed to fetch'))
    const err = await failure(request('/me'))
    expect(err).toBeInstanceOf(ApiError)
    expect(err.status).toBe(0)
    expect(err.code).toBe('network')
  })

  it('reports a 401 to the session handler with the API message', async () => {
    fetchMock.mockResolvedValue(json(401, { error: { code: 'unauthorized', message: 'token expired' } }))
    const err = await failure(request('/me'))
    expect(err.status).toBe(401)
    expect(onUnauthorized).toHaveBeenCalledWith('token expired')
  })

  it('does not treat a failed login as an expired session', async () => {
    fetchMock.mockResolvedValue(json(401, { error: { code: 'unauthorized', message: 'invalid username or password' } }))
    const err = await failure(login('admin', 'wrong'))
    expect(err.message).toBe('invalid username or password')
    expect(onUnauthorized).not.toHaveBeenCalled()
    expect(fetchMock.mock.calls[0][1].headers.authorization).toBeUndefined()
  })
})

describe('changing the password', () => {
  it('posts both passwords with the session token and keeps the session on a wrong one', async () => {
    fetchMock.mockResolvedValue(json(400, { error: { code: 'bad_request', message: 'current_password is not your password' } }))
    const err = await failure(changePassword('old-one-1', 'new-one-12'))
    expect(err.status).toBe(400)
    expect(onUnauthorized).not.toHaveBeenCalled()
    const [url, init] = fetchMock.mock.calls[0]
    expect(url).toBe('/api/v1/me/password')
    expect(init.method).toBe('POST')
    expect(init.headers.authorization).toBe('Bearer tok-123')
    expect(JSON.parse(init.body)).toEqual({ current_password: 'old-one-1', new_password: 'new-one-12' })
  })

  it('says what the API would refuse before asking it', () => {
    expect(passwordProblem('short', 'old-one-1')).toBe('At least 8 characters')
    expect(passwordProblem('x'.repeat(257), 'old-one-1')).toBe('At most 256 characters')
    expect(passwordProblem('old-one-1', 'old-one-1')).toBe('The same as the current one')
    expect(passwordProblem('new-one-12', 'old-one-1')).toBeNull()
  })
})

describe('query strings', () => {
  it('leaves out empty values and encodes the rest', () => {
    expect(buildQuery({ a: 1, b: '', c: undefined, d: null, e: 'x y', f: false })).toBe('?a=1&e=x+y&f=false')
    expect(buildQuery({})).toBe('')
    expect(buildQuery({ m: ['a', 'b'] })).toBe('?m=a&m=b')
  })

  it('passes request-log filters and paging', async () => {
    fetchMock.mockResolvedValue(json(200, { items: [], total: 0, page: 2, page_size: 20 }))
    await listRequestLogs({ request_id: 'req_9', user_id: 3, model: 'claude-sonnet-4-5', from: '2025-01-01T00:00:00.000Z' }, 2, 20)
    expect(fetchMock.mock.calls[0][0]).toBe(
      '/api/v1/request-logs?request_id=req_9&user_id=3&model=claude-sonnet-4-5&from=2025-01-01T00%3A00%3A00.000Z&page=2&page_size=20',
    )
  })

  it('clears one session with DELETE and its filters', async () => {
    fetchMock.mockResolvedValue(json(200, { cleared: 1 }))
    await clearSessions(4, 'abc')
    const [url, init] = fetchMock.mock.calls[0]
    expect(url).toBe('/api/v1/cache/sessions?key_id=4&session=abc')
    expect(init.method).toBe('DELETE')
  })
})

describe('downloads', () => {
  it('fetches the CSV export with the bearer token and its file name', async () => {
    fetchMock.mockResolvedValue(
      new Response('request_id,created_at\n', {
        status: 200,
        headers: { 'content-type': 'text/csv', 'content-disposition': 'attachment; filename="request-logs.csv"' },
      }),
    )
    const { blob, filename } = await exportRequestLogs({ api_key_id: 7 })
    expect(filename).toBe('request-logs.csv')
    expect(await blob.text()).toBe('request_id,created_at\n')
    const [url, init] = fetchMock.mock.calls[0]
    expect(url).toBe('/api/v1/request-logs/export?api_key_id=7')
    expect(init.headers.authorization).toBe('Bearer tok-123')
  })

  it('uses the fallback name without Content-Disposition', async () => {
    fetchMock.mockResolvedValue(new Response('x', { status: 200 }))
    const { filename } = await requestBlob('/x', {}, 'fallback.csv')
    expect(filename).toBe('fallback.csv')
  })
})
