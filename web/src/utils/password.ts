// What the API will refuse in a new password, said before asking it.

/** Why `next` cannot be the new password, or null when it can. */
export function passwordProblem(next: string, current: string): string | null {
  if (next.length < 8) return 'At least 8 characters'
  if (next.length > 256) return 'At most 256 characters'
  if (next === current) return 'The same as the current one'
  return null
}
