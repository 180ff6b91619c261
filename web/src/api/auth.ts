// Login and the current user.
import { request } from './http'
import type { LoginResponse, User } from './types'

export function login(username: string, password: string): Promise<LoginResponse> {
  // A 401 here is a wrong password, not an expired session.
  return request<LoginResponse>('/auth/login', { method: 'POST', body: { username, password }, auth: false })
}

export function me(): Promise<User> {
  return request<User>('/me')
}

/** Changes the signed-in user's own password; the answer is a new session. */
export function changePassword(currentPassword: string, newPassword: string): Promise<LoginResponse> {
  // A wrong current password is a 400, so the session survives it.
  return request<LoginResponse>('/me/password', {
    method: 'POST',
    body: { current_password: currentPassword, new_password: newPassword },
  })
}
