// Users (admin): list, create, update, delete.
import { request } from './http'
import type { List, User, UserCreate, UserUpdate } from './types'

export const listUsers = () => request<List<User>>('/users')
export const getUser = (id: number) => request<User>(`/users/${id}`)
export const createUser = (body: UserCreate) => request<User>('/users', { method: 'POST', body })
export const updateUser = (id: number, body: UserUpdate) => request<User>(`/users/${id}`, { method: 'PATCH', body })
export const deleteUser = (id: number) => request<void>(`/users/${id}`, { method: 'DELETE' })
