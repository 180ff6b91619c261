// The submit flow every form dialog shares: validate, one save at a time,
// close when it succeeds, and report a failure where the operator sees it.
import { ref, type Ref } from 'vue'
import type { FormInstance } from 'element-plus'
import { notifyError } from '@/utils/errors'

/** `save` returns `false` to keep the dialog open (it said what is missing). */
export function useFormSubmit(
  formRef: Ref<FormInstance | undefined>,
  save: () => Promise<boolean | void>,
  close: () => void,
) {
  const busy = ref(false)
  async function submit() {
    const valid = await formRef.value?.validate().catch(() => false)
    if (!valid || busy.value) return
    busy.value = true
    try {
      if ((await save()) !== false) close()
    } catch (e) {
      notifyError(e)
    } finally {
      busy.value = false
    }
  }
  return { busy, submit }
}
