// Confirmation before destructive actions (ElMessageBox; its confirm button carries the
// class "confirm-ok" for browser tests).
import { ElMessageBox } from 'element-plus'

export async function confirmAction(
  message: string,
  title = 'Please confirm',
  opts: { confirmText?: string; danger?: boolean } = {},
): Promise<boolean> {
  try {
    await ElMessageBox.confirm(message, title, {
      confirmButtonText: opts.confirmText ?? 'Confirm',
      cancelButtonText: 'Cancel',
      type: opts.danger ? 'warning' : 'info',
      confirmButtonClass: opts.danger ? 'confirm-ok el-button--danger' : 'confirm-ok',
      cancelButtonClass: 'confirm-cancel',
      autofocus: false,
    })
    return true
  } catch {
    return false
  }
}
