// v-row-testid on an el-table: copies the data-row-testid of a marker inside each row to
// the row's <tr> as data-testid, so browser tests can find rows by name.
import type { Directive } from 'vue'

type Observed = HTMLElement & { __rowTestIdObserver?: MutationObserver }

function stamp(root: HTMLElement) {
  root.querySelectorAll('tr').forEach((tr) => {
    const marker = tr.querySelector('[data-row-testid]')
    const id = marker?.getAttribute('data-row-testid')
    if (id && tr.getAttribute('data-testid') !== id) tr.setAttribute('data-testid', id)
  })
}

export const rowTestId: Directive<Observed> = {
  mounted(el) {
    stamp(el)
    const observer = new MutationObserver(() => stamp(el))
    observer.observe(el, { childList: true, subtree: true, characterData: true, attributes: true, attributeFilter: ['data-row-testid'] })
    el.__rowTestIdObserver = observer
  },
  unmounted(el) {
    el.__rowTestIdObserver?.disconnect()
  },
}
