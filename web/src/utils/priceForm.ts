// The body the price form sends: every price, since the API keeps a field left out.
import { PRICE_FIELDS, type PriceField, type PriceInput } from '@/api/types'

/** An empty field is 0; the long-context prices are 0 when there is no tier. */
export function priceInput(form: Record<PriceField, string>, longContextThreshold: number): PriceInput {
  const body: PriceInput = {
    input_price: form.input_price.trim(),
    output_price: form.output_price.trim(),
    long_context_threshold: longContextThreshold,
  }
  for (const f of PRICE_FIELDS) {
    if (f === 'input_price' || f === 'output_price') continue
    body[f] = f.startsWith('long_') && longContextThreshold <= 0 ? '0' : form[f].trim() || '0'
  }
  return body
}
