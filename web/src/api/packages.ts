// Packages: everyone's or a user's list, create (admin), update, delete, reset usage.
import { request } from './http'
import type { List, Package, PackageCreate, PackageUpdate } from './types'

export const listPackages = (userId: number) => request<List<Package>>(`/users/${userId}/packages`)
/** Every user's packages (an admin), filtered by user, status or type. */
export const listAllPackages = (filter: { user_id?: number; status?: string; type?: string } = {}) =>
  request<List<Package>>('/packages', { query: filter })
export const createPackage = (userId: number, body: PackageCreate) =>
  request<Package>(`/users/${userId}/packages`, { method: 'POST', body })
export const resetUserPackages = (userId: number) =>
  request<{ reset: number }>(`/users/${userId}/packages/reset`, { method: 'POST' })
export const getPackage = (id: number) => request<Package>(`/packages/${id}`)
export const updatePackage = (id: number, body: PackageUpdate) =>
  request<Package>(`/packages/${id}`, { method: 'PATCH', body })
export const deletePackage = (id: number) => request<void>(`/packages/${id}`, { method: 'DELETE' })
export const resetPackage = (id: number) => request<Package>(`/packages/${id}/reset`, { method: 'POST' })
