// What each route declares: who may open it, its title, and its place in the menu.
import type { Role } from '@/api/types'
import 'vue-router'

export {}

declare module 'vue-router' {
  interface RouteMeta {
    /** Reachable without a session (the login page). */
    public?: boolean
    /** Roles that may open the route; absent: any signed-in user. */
    roles?: Role[]
    title?: string
    /** Shown in the sidebar, with this icon name. */
    menu?: boolean
    icon?: string
  }
}
