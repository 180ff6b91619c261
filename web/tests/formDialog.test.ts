// The submit flow all form dialogs share: invalid forms are not saved, a
// save that says "keep open" keeps the dialog, a failure is reported and the
// dialog stays, and a second click while a save runs does nothing.
import { describe, expect, it, vi } from 'vitest'
import { ref } from 'vue'
import type { FormInstance } from 'element-plus'

const notified: unknown[] = []
vi.mock('@/utils/errors', () => ({ notifyError: (e: unknown) => notified.push(e) }))

import { useFormSubmit } from '@/utils/formDialog'

function form(valid: boolean) {
  return ref({ validate: () => (valid ? Promise.resolve(true) : Promise.reject(new Error('invalid'))) } as unknown as FormInstance)
}

describe('useFormSubmit', () => {
  it('saves a valid form once and closes', async () => {
    let release: () => void = () => {}
    const save = vi.fn(() => new Promise<void>((r) => (release = r)))
    const close = vi.fn()
    const { busy, submit } = useFormSubmit(form(true), save, close)
    const first = submit()
    await vi.waitFor(() => expect(busy.value).toBe(true))
    await submit()
    release()
    await first
    expect(save).toHaveBeenCalledTimes(1)
    expect(close).toHaveBeenCalledTimes(1)
    expect(busy.value).toBe(false)
  })

  it('does not save an invalid form', async () => {
    const save = vi.fn(async () => {})
    const close = vi.fn()
    await useFormSubmit(form(false), save, close).submit()
    expect(save).not.toHaveBeenCalled()
    expect(close).not.toHaveBeenCalled()
  })

  it('stays open when the save says so, or fails', async () => {
    const close = vi.fn()
    await useFormSubmit(form(true), async () => false, close).submit()
    const failure = new Error('409')
    const failing = useFormSubmit(form(true), async () => Promise.reject(failure), close)
    await failing.submit()
    expect(close).not.toHaveBeenCalled()
    expect(notified).toContain(failure)
    expect(failing.busy.value).toBe(false)
  })
})
