// Layout state: the sidebar (collapsed on a laptop, a drawer on a phone) and the screen size.
import { defineStore } from 'pinia'
import { ref } from 'vue'

const MOBILE_MAX = 768
const COLLAPSE_KEY = 'aiproxy.sidebar.collapsed'

export const useUiStore = defineStore('ui', () => {
  const isMobile = ref(typeof window !== 'undefined' && window.innerWidth < MOBILE_MAX)
  const collapsed = ref(typeof localStorage !== 'undefined' && localStorage.getItem(COLLAPSE_KEY) === '1')
  const drawerOpen = ref(false)

  function onResize() {
    isMobile.value = window.innerWidth < MOBILE_MAX
    if (!isMobile.value) drawerOpen.value = false
  }

  function toggleSidebar() {
    if (isMobile.value) {
      drawerOpen.value = !drawerOpen.value
    } else {
      collapsed.value = !collapsed.value
      try {
        localStorage.setItem(COLLAPSE_KEY, collapsed.value ? '1' : '0')
      } catch {
        // ignore
      }
    }
  }

  return { isMobile, collapsed, drawerOpen, onResize, toggleSidebar }
})
