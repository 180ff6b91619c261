// The console's routes: the login page, and the pages inside the layout with the roles
// that may open them (views are loaded on demand).
import type { RouteRecordRaw } from 'vue-router'
import './meta'

const ADMIN = ['admin'] as const
const EVERYONE = ['admin', 'user'] as const

export const pageRoutes: RouteRecordRaw[] = [
  {
    path: 'dashboard',
    name: 'dashboard',
    component: () => import('@/views/DashboardView.vue'),
    meta: { title: 'Dashboard', roles: [...ADMIN], menu: true, icon: 'Odometer' },
  },
  {
    path: 'accounts',
    name: 'accounts',
    component: () => import('@/views/AccountsView.vue'),
    meta: { title: 'Accounts', roles: [...ADMIN], menu: true, icon: 'Connection' },
  },
  {
    path: 'users',
    name: 'users',
    component: () => import('@/views/UsersView.vue'),
    meta: { title: 'Users', roles: [...ADMIN], menu: true, icon: 'User' },
  },
  {
    path: 'packages',
    name: 'packages',
    component: () => import('@/views/PackagesView.vue'),
    meta: { title: 'Packages', roles: [...EVERYONE], menu: true, icon: 'Box' },
  },
  {
    path: 'keys',
    name: 'keys',
    component: () => import('@/views/ApiKeysView.vue'),
    meta: { title: 'API keys', roles: [...EVERYONE], menu: true, icon: 'Key' },
  },
  {
    path: 'logs',
    name: 'logs',
    component: () => import('@/views/RequestLogsView.vue'),
    meta: { title: 'Request logs', roles: [...EVERYONE], menu: true, icon: 'Document' },
  },
  {
    path: 'usage',
    name: 'usage',
    component: () => import('@/views/UsageView.vue'),
    meta: { title: 'Usage', roles: [...EVERYONE], menu: true, icon: 'TrendCharts' },
  },
  {
    path: 'cache',
    name: 'cache',
    component: () => import('@/views/CacheView.vue'),
    meta: { title: 'Cache', roles: [...ADMIN], menu: true, icon: 'Coin' },
  },
  {
    path: 'settings',
    name: 'settings',
    component: () => import('@/views/SettingsView.vue'),
    meta: { title: 'Settings', roles: [...ADMIN], menu: true, icon: 'Setting' },
  },
  {
    path: ':pathMatch(.*)*',
    name: 'not-found',
    component: () => import('@/views/NotFoundView.vue'),
    meta: { title: 'Not found' },
  },
]

export const routes: RouteRecordRaw[] = [
  {
    path: '/login',
    name: 'login',
    component: () => import('@/views/LoginView.vue'),
    meta: { public: true, title: 'Sign in' },
  },
  {
    path: '/',
    name: 'home',
    component: () => import('@/components/AppLayout.vue'),
    children: pageRoutes,
  },
]
