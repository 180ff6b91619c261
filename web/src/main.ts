// Console entry: Vue app with Pinia, the router, the API client bound to the session,
// Element Plus services and styles, and the global error handlers (never a white screen).
import { createApp } from 'vue'
import { createPinia } from 'pinia'
import { ElLoading } from 'element-plus'
import 'element-plus/theme-chalk/base.css'
import 'element-plus/es/components/message/style/css'
import 'element-plus/es/components/message-box/style/css'
import 'element-plus/es/components/loading/style/css'
import App from './App.vue'
import { buildRouter } from './router'
import { connectClient } from './router/session'
import { rowTestId } from './components/rowTestId'
import { useAuthStore } from './stores/auth'
import { notifyError } from './utils/errors'
import './styles.css'

const app = createApp(App)
app.use(createPinia())
const router = buildRouter()
connectClient(router)
app.use(router)
app.directive('loading', ElLoading.directive)
app.directive('row-testid', rowTestId)

app.config.errorHandler = (err, _instance, info) => {
  console.error('console error', info, err)
  notifyError(err, 'Something went wrong on this page')
}
window.addEventListener('unhandledrejection', (ev) => {
  console.error('unhandled rejection', ev.reason)
  notifyError(ev.reason)
})

app.mount('#app')

// The role or name may have changed since the token was issued; a 401 here ends the session.
const auth = useAuthStore()
if (auth.isLoggedIn) auth.refreshMe().catch((e) => notifyError(e))
