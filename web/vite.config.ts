// Vite build, dev server (proxying /api to the control plane) and Vitest setup of the console.
import { fileURLToPath, URL } from 'node:url'
import { defineConfig } from 'vitest/config'
import vue from '@vitejs/plugin-vue'
import Components from 'unplugin-vue-components/vite'
import { ElementPlusResolver } from 'unplugin-vue-components/resolvers'

// Where `npm run dev` (and `vite preview`) send /api; AIPROXY_ADMIN_URL overrides it.
const apiTarget = process.env.AIPROXY_ADMIN_URL || 'http://127.0.0.1:8090'

export default defineConfig(({ command }) => ({
  base: '/',
  plugins: [
    vue(),
    // Element Plus components used in templates are imported (with their CSS) on demand.
    // The type declarations are refreshed by the dev server only, so a build never
    // rewrites a source file.
    Components({
      dts: command === 'serve' ? 'src/components.d.ts' : false,
      dirs: [],
      resolvers: [ElementPlusResolver({ importStyle: 'css' })],
    }),
  ],
  resolve: {
    alias: { '@': fileURLToPath(new URL('./src', import.meta.url)) },
  },
  server: {
    port: 5173,
    proxy: {
      '/api': { target: apiTarget, changeOrigin: false },
    },
  },
  preview: {
    port: 4173,
    proxy: {
      '/api': { target: apiTarget, changeOrigin: false },
    },
  },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    chunkSizeWarningLimit: 900,
    rollupOptions: {
      output: {
        // Charts load only with the pages that draw them; Element Plus components are split
        // by the pages that use them, so the login page stays small.
        manualChunks(id) {
          if (!id.includes('node_modules')) return undefined
          if (/node_modules\/(echarts|zrender|vue-echarts)\//.test(id)) return 'charts'
          if (/node_modules\/(vue|@vue|vue-router|pinia)\//.test(id)) return 'vue'
          return undefined
        },
      },
    },
  },
  test: {
    environment: 'jsdom',
    include: ['tests/**/*.test.ts'],
    restoreMocks: true,
  },
}))
