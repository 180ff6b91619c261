// Showing failures to the person: the message of an ApiError (or any error), as an
// ElMessage; 401s are left to the session handling, which already sends them to login.
import { ElMessage } from 'element-plus'
import { isApiError } from '@/api/http'

export function errorMessage(e: unknown, fallback = 'Something went wrong'): string {
  if (isApiError(e)) return e.message || fallback
  if (e instanceof Error && e.message) return e.message
  if (typeof e === 'string' && e) return e
  return fallback
}

/** Whether an error needs no message: a cancelled request, a dismissed dialog, a 401. */
export function isQuiet(e: unknown): boolean {
  if (e === 'cancel' || e === 'close') return true
  if (e instanceof DOMException && e.name === 'AbortError') return true
  return isApiError(e) && e.status === 401
}

export function notifyError(e: unknown, fallback?: string): void {
  if (isQuiet(e)) return
  ElMessage.error({ message: errorMessage(e, fallback), grouping: true, showClose: true, duration: 6000 })
}
