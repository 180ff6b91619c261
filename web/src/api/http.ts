// The one HTTP entry point of the console: bearer token, query building,
// error normalisation into ApiError, 401 handling, and authenticated downloads.

export const API_BASE = '/api/v1'

/** A failed API call, normalised from `{"error":{"code","message"}}` or a network failure. */
export class ApiError extends Error {
  readonly status: number
  readonly code: string

  constructor(status: number, code: string, message: string) {
    super(message)
    this.name = 'ApiError'
    this.status = status
    this.code = code
  }
}

export function isApiError(e: unknown): e is ApiError {
  return e instanceof ApiError
}

export type QueryValue = string | number | boolean | null | undefined
export type Query = Record<string, QueryValue | QueryValue[]>

export interface RequestOptions {
  method?: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE'
  query?: Query
  body?: unknown
  /** Send the bearer token and treat a 401 as the end of the session (default true). */
  auth?: boolean
  signal?: AbortSignal
}

interface ClientHooks {
  getToken: () => string | null
  onUnauthorized: (message: string) => void
  fetch: typeof fetch
}

const hooks: ClientHooks = {
  getToken: () => null,
  onUnauthorized: () => {},
  fetch: (...args) => globalThis.fetch(...args),
}

/** Wires the client to the session store and the router (done once in main.ts, and by tests). */
export function configureClient(next: Partial<ClientHooks>): void {
  Object.assign(hooks, next)
}

/** `?a=1&b=x` from a query object; empty strings, null and undefined are left out. */
export function buildQuery(query?: Query): string {
  if (!query) return ''
  const params = new URLSearchParams()
  for (const [key, raw] of Object.entries(query)) {
    const values = Array.isArray(raw) ? raw : [raw]
    for (const v of values) {
      if (v === undefined || v === null || v === '') continue
      params.append(key, String(v))
    }
  }
  const s = params.toString()
  return s ? `?${s}` : ''
}

function statusCode(status: number): string {
  switch (status) {
    case 400:
      return 'bad_request'
    case 401:
      return 'unauthorized'
    case 403:
      return 'forbidden'
    case 404:
      return 'not_found'
    case 409:
      return 'conflict'
    case 413:
      return 'too_large'
    case 503:
      return 'unavailable'
    default:
      return status >= 500 ? 'internal' : 'error'
  }
}

/** Turns a non-2xx response into an ApiError, whatever its body is. */
export async function toApiError(res: Response): Promise<ApiError> {
  let code = statusCode(res.status)
  let message = ''
  let text = ''
  try {
    text = await res.text()
  } catch {
    text = ''
  }
  if (text) {
    try {
      const body = JSON.parse(text) as { error?: { code?: unknown; message?: unknown } | string; message?: unknown }
      if (body && typeof body.error === 'object' && body.error) {
        if (typeof body.error.code === 'string' && body.error.code) code = body.error.code
        if (typeof body.error.message === 'string') message = body.error.message
      } else if (body && typeof body.error === 'string') {
        message = body.error
      } else if (body && typeof body.message === 'string') {
        message = body.message
      }
    } catch {
      // Not JSON (a proxy's HTML error page, plain text): show its first line.
      message = text.trim().split('\n')[0].slice(0, 200)
    }
  }
  if (!message) message = `${res.status} ${res.statusText || 'request failed'}`.trim()
  return new ApiError(res.status, code, message)
}

async function send(path: string, opts: RequestOptions, accept: string): Promise<Response> {
  const auth = opts.auth !== false
  const headers: Record<string, string> = { accept }
  const token = auth ? hooks.getToken() : null
  if (token) headers.authorization = `Bearer ${token}`
  let body: BodyInit | undefined
  if (opts.body !== undefined) {
    headers['content-type'] = 'application/json'
    body = JSON.stringify(opts.body)
  }
  let res: Response
  try {
    res = await hooks.fetch(`${API_BASE}${path}${buildQuery(opts.query)}`, {
      method: opts.method ?? 'GET',
      headers,
      body,
      signal: opts.signal,
    })
  } catch (e) {
    if (e instanceof DOMException && e.name === 'AbortError') throw e
    throw new ApiError(0, 'network', 'Cannot reach the server; check your connection and try again')
  }
  if (!res.ok) {
    const err = await toApiError(res)
    if (res.status === 401 && auth) hooks.onUnauthorized(err.message)
    throw err
  }
  return res
}

/** Calls the admin API and returns its JSON body (undefined for 204). */
export async function request<T>(path: string, opts: RequestOptions = {}): Promise<T> {
  const res = await send(path, opts, 'application/json')
  if (res.status === 204) return undefined as T
  const text = await res.text()
  if (!text) return undefined as T
  try {
    return JSON.parse(text) as T
  } catch {
    throw new ApiError(res.status, 'bad_response', 'The server sent a response the console cannot read')
  }
}

/** Fetches a file with the bearer token; the file name comes from Content-Disposition. */
export async function requestBlob(
  path: string,
  opts: RequestOptions = {},
  fallbackName = 'download',
): Promise<{ blob: Blob; filename: string }> {
  const res = await send(path, opts, '*/*')
  const blob = await res.blob()
  const disposition = res.headers.get('content-disposition') ?? ''
  const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition)
  return { blob, filename: match ? decodeURIComponent(match[1]) : fallbackName }
}
