// Names for ids shown across pages (users, API keys, accounts), loaded once and cached
// briefly; users only load their own keys.
import { defineStore } from 'pinia'
import { ref } from 'vue'
import { listAccounts } from '@/api/accounts'
import { listKeys } from '@/api/keys'
import { listUsers } from '@/api/users'
import type { Account, ApiKey, User } from '@/api/types'
import { useAuthStore } from './auth'

const TTL_MS = 30_000

export const useLookupStore = defineStore('lookups', () => {
  const users = ref<User[]>([])
  const keys = ref<ApiKey[]>([])
  const accounts = ref<Account[]>([])
  const loadedAt = { users: 0, keys: 0, accounts: 0 }
  const pending: Partial<Record<keyof typeof loadedAt, Promise<void>>> = {}

  function once(kind: keyof typeof loadedAt, force: boolean, load: () => Promise<void>): Promise<void> {
    if (!force && Date.now() - loadedAt[kind] < TTL_MS) return Promise.resolve()
    if (pending[kind]) return pending[kind]!
    const p = load()
      .then(() => {
        loadedAt[kind] = Date.now()
      })
      .finally(() => {
        delete pending[kind]
      })
    pending[kind] = p
    return p
  }

  const loadUsers = (force = false) =>
    useAuthStore().isAdmin
      ? once('users', force, async () => {
          users.value = (await listUsers()).items
        })
      : Promise.resolve()
  const loadKeys = (force = false) =>
    once('keys', force, async () => {
      keys.value = (await listKeys()).items
    })
  const loadAccounts = (force = false) =>
    useAuthStore().isAdmin
      ? once('accounts', force, async () => {
          accounts.value = (await listAccounts()).items
        })
      : Promise.resolve()

  function invalidate() {
    loadedAt.users = 0
    loadedAt.keys = 0
    loadedAt.accounts = 0
  }

  function reset() {
    users.value = []
    keys.value = []
    accounts.value = []
    invalidate()
  }

  const userName = (id: number | null | undefined) => {
    if (id === null || id === undefined) return '—'
    const self = useAuthStore().user
    if (self && self.id === id) return self.username
    return users.value.find((u) => u.id === id)?.username ?? `#${id}`
  }
  const keyName = (id: number | null | undefined) =>
    id === null || id === undefined ? '—' : (keys.value.find((k) => k.id === id)?.name ?? `#${id}`)
  const accountName = (id: number | null | undefined) =>
    id === null || id === undefined ? '—' : (accounts.value.find((a) => a.id === id)?.name ?? `#${id}`)

  return {
    users,
    keys,
    accounts,
    loadUsers,
    loadKeys,
    loadAccounts,
    invalidate,
    reset,
    userName,
    keyName,
    accountName,
  }
})
