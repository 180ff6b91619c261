// The signed-in session: token, its expiry and the user (kept in localStorage), login,
// logout, and what the login page says when a session ends.
import { defineStore } from 'pinia'
import { computed, ref } from 'vue'
import { changePassword as apiChangePassword, login as apiLogin, me as apiMe } from '@/api/auth'
import type { Role, User } from '@/api/types'
import { loadSession, saveSession, sessionEndMessage } from '@/utils/session'

export const useAuthStore = defineStore('auth', () => {
  const initial = loadSession()
  const token = ref<string | null>(initial?.token ?? null)
  const expiresAt = ref<string | null>(initial?.expires_at ?? null)
  const user = ref<User | null>(initial?.user ?? null)
  /** Shown once on the login page (why the person was sent there). */
  const notice = ref<string | null>(null)

  const isLoggedIn = computed(() => {
    if (!token.value || !user.value) return false
    return !expiresAt.value || Date.parse(expiresAt.value) > Date.now()
  })
  const role = computed<Role | null>(() => (isLoggedIn.value ? (user.value?.role ?? null) : null))
  const isAdmin = computed(() => role.value === 'admin')

  function persist() {
    saveSession(token.value && user.value ? { token: token.value, expires_at: expiresAt.value ?? '', user: user.value } : null)
  }

  async function login(username: string, password: string): Promise<User> {
    const res = await apiLogin(username, password)
    token.value = res.token
    expiresAt.value = res.expires_at ?? null
    user.value = res.user
    notice.value = null
    persist()
    return res.user
  }

  /** Changes the password; the tokens issued before stop working, so the new one replaces ours. */
  async function changePassword(currentPassword: string, newPassword: string): Promise<void> {
    const res = await apiChangePassword(currentPassword, newPassword)
    token.value = res.token
    expiresAt.value = res.expires_at ?? null
    user.value = res.user
    persist()
  }

  /** Ends the session; `message` is shown on the login page. */
  function logout(message: string | null = null) {
    token.value = null
    expiresAt.value = null
    user.value = null
    notice.value = message
    persist()
  }

  /** A 401 from the API: the session is over. Returns false when it already was. */
  function expire(apiMessage?: string | null): boolean {
    if (!token.value) return false
    logout(sessionEndMessage(apiMessage))
    return true
  }

  /** Reloads the user (role or name may have changed since login). */
  async function refreshMe(): Promise<void> {
    if (!token.value) return
    const u = await apiMe()
    user.value = u
    persist()
  }

  function takeNotice(): string | null {
    const n = notice.value
    notice.value = null
    return n
  }

  return {
    token,
    expiresAt,
    user,
    notice,
    isLoggedIn,
    role,
    isAdmin,
    login,
    changePassword,
    logout,
    expire,
    refreshMe,
    takeNotice,
  }
})
