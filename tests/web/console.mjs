// Drives the admin console in Debian's Chromium (headless) against a running
// aiproxy and its mock upstream, as an operator and then as a user would, and
// saves a screenshot of every page. Exits non-zero on the first failed step.
//
// Environment: ADMIN_URL, PROXY_URL, MOCK_URL, ADMIN_PASSWORD, SCREENSHOTS
// (a directory), CHROMIUM (default /usr/bin/chromium).
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { chromium } from 'playwright-core'

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback
  if (v === undefined) throw new Error(`${name} is not set`)
  return v
}
const ADMIN = env('ADMIN_URL')
const PROXY = env('PROXY_URL')
const MOCK = env('MOCK_URL')
const PASSWORD = env('ADMIN_PASSWORD')
const SHOTS = env('SCREENSHOTS')
mkdirSync(SHOTS, { recursive: true })

const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
})
const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, timezoneId: 'Asia/Shanghai' })
const page = await context.newPage()
page.setDefaultTimeout(15000)
const pageErrors = []
page.on('pageerror', (e) => pageErrors.push(String(e)))

const id = (testid) => page.locator(`[data-testid="${testid}"]`).first()
let step = 0
async function shot(name) {
  step += 1
  await page.waitForLoadState('networkidle').catch(() => {})
  await page.screenshot({ path: join(SHOTS, `${String(step).padStart(2, '0')}-${name}.png`), fullPage: true })
}
/** Fills an input marked with `testid` (the mark may sit on the input or a wrapper). */
async function fill(testid, value) {
  const el = id(testid)
  const tag = await el.evaluate((e) => e.tagName)
  const input = tag === 'INPUT' || tag === 'TEXTAREA' ? el : el.locator('input, textarea').first()
  await input.fill(value)
}
/** Opens the select marked `testid` and picks the visible option labelled `label`. */
async function choose(testid, label, search) {
  await id(testid).click()
  if (search) await page.keyboard.type(search)
  await page.locator('.el-select-dropdown__item:visible', { hasText: label }).first().click()
}
async function nav(name) {
  await id(`nav-${name}`).click()
  await page.waitForURL((u) => u.pathname.startsWith(`/${name}`))
}
async function login(username, password) {
  await page.goto(`${ADMIN}/login`)
  await fill('login-username', username)
  await fill('login-password', password)
  await id('login-submit').click()
  await page.waitForURL((u) => !u.pathname.startsWith('/login'))
}
async function api(method, path, token, body) {
  const r = await fetch(`${ADMIN}/api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  })
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`)
  return r.status === 204 ? null : r.json()
}
const token = () => page.evaluate(() => JSON.parse(localStorage.getItem('aiproxy.session') ?? '{}').token ?? null)
const expectVisible = async (locator, what) => {
  try {
    await locator.waitFor({ state: 'visible' })
  } catch (e) {
    throw new Error(`${what} not visible: ${e.message}`)
  }
}

// --- An expired session goes back to the login page with a message.
await page.goto(`${ADMIN}/login`)
await page.evaluate(() =>
  localStorage.setItem(
    'aiproxy.session',
    JSON.stringify({
      token: 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOjF9.bad',
      expires_at: new Date(Date.now() + 3600e3).toISOString(),
      user: { id: 1, username: 'admin', role: 'admin', status: 'active' },
    }),
  ),
)
await page.goto(`${ADMIN}/accounts`)
await page.waitForURL((u) => u.pathname.startsWith('/login'))
await expectVisible(id('login-notice'), 'the expired-session message')
await shot('login')

// --- The operator signs in and sets things up.
await login('admin', PASSWORD)
await expectVisible(id('dashboard-account-states'), 'dashboard')
await shot('dashboard-empty')

await nav('accounts')
await id('accounts-create').click()
await fill('account-form-name', 'mock-claude')
await choose('account-form-type', 'Claude API key')
await fill('account-form-base-url', MOCK)
await fill('account-cred-api_key', 'mock-key-for-the-console')
await id('account-form-submit').click()
await expectVisible(page.locator('[data-testid="account-row-mock-claude"]'), 'the new account row')
await shot('accounts')

await nav('users')
await id('users-create').click()
await fill('user-form-username', 'webuser')
await fill('user-form-password', 'webuser-password-1')
await id('user-form-submit').click()
await expectVisible(page.locator('[data-testid="user-row-webuser"]'), 'the new user row')
await shot('users')

const adminToken = await token()
if (!adminToken) throw new Error('no login token in local storage')
const users = await api('GET', '/users', adminToken)
const webuser = users.items.find((u) => u.username === 'webuser')

await page.goto(`${ADMIN}/packages?user_id=${webuser.id}`)
await id('packages-create').click()
await fill('package-form-name', 'console-quota')
await page.locator('[data-testid="package-form-type"] label', { hasText: 'Quota' }).click()
await fill('package-form-total', '5')
await id('package-form-submit').click()
await expectVisible(page.locator('[data-testid="package-row-console-quota"]'), 'the new package row')
await shot('packages')
// With no user chosen, everyone's packages are listed with their owner.
await page.goto(`${ADMIN}/packages`)
await expectVisible(page.locator('[data-testid="package-row-console-quota"]'), 'the package among everyone\'s')
await expectVisible(page.locator('[data-testid^="package-user-"]', { hasText: 'webuser' }), 'the package\'s owner')
await shot('packages-all')

await nav('keys')
await id('keys-create').click()
await choose('key-form-user', 'webuser', 'webuser')
await fill('key-form-name', 'browser-key')
await id('key-form-submit').click()
await expectVisible(id('new-key-dialog'), 'the new key dialog')
const keyText = (await id('new-key-text').evaluate((e) => ('value' in e ? e.value : e.textContent) || '')).trim()
if (!keyText.startsWith('sk-')) throw new Error(`the new key is not shown: ${keyText}`)
await shot('new-key-once')
await id('new-key-close').click()
await expectVisible(page.locator('[data-testid="key-row-browser-key"]'), 'the new key row')
if ((await page.content()).includes(keyText)) throw new Error('the key is still on the page after closing its dialog')
await shot('keys')

// --- A request through the relay (once the key has reached it).
let requestId = null
for (let i = 0; i < 50 && !requestId; i++) {
  const r = await fetch(`${PROXY}/v1/messages`, {
    method: 'POST',
    headers: { 'x-api-key': keyText, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'claude-sonnet-4-5', max_tokens: 16, system: 'console test', messages: [{ role: 'user', content: 'hello from the browser test' }] }),
  })
  if (r.status === 200) requestId = r.headers.get('x-request-id')
  else await new Promise((res) => setTimeout(res, 100))
}
if (!requestId) throw new Error('the relay never accepted the new key')

// It shows in request logs (ingestion takes a moment) ...
await nav('logs')
for (let i = 0; i < 40; i++) {
  if (await page.locator(`[data-testid="log-row-${requestId}"]`).count()) break
  await id('logs-refresh').click()
  await page.waitForTimeout(250)
}
await expectVisible(page.locator(`[data-testid="log-row-${requestId}"]`), 'the request in request logs')
await page.locator(`[data-testid="log-row-${requestId}"]`).click()
await expectVisible(id('log-detail'), 'the log detail')
const upstreamId = (await id('log-upstream-request-id').innerText()).trim()
if (!upstreamId.startsWith('req_mock_')) throw new Error(`no upstream request id in the detail: ${upstreamId}`)
await shot('request-log-detail')
await page.keyboard.press('Escape')
// The upstream's id finds the request.
await id('logs-filter-request-id').fill(upstreamId)
await id('logs-filter-apply').click()
await expectVisible(page.locator(`[data-testid="log-row-${requestId}"]`), 'the request found by the upstream id')
if ((await page.locator('[data-testid^="log-row-"]').count()) !== 1) throw new Error('the search by upstream id found other requests')
await id('logs-filter-clear').click()

// ... and on the dashboard.
await nav('dashboard')
await id('dashboard-refresh').click()
await page.waitForFunction(() => /claude-sonnet-4-5/.test(document.body.innerText))
await page.waitForTimeout(1500) // let the charts finish animating
await shot('dashboard')

await nav('usage')
await expectVisible(page.locator('[data-testid="usage-billing-zone"]', { hasText: 'UTC' }), 'the billing zone')
await shot('usage')

// --- Cache management: the session is listed and cleared.
await nav('cache')
await id('cache-tab-sessions').click()
const sessionRow = page.locator('[data-testid^="cache-session-row-"]').first()
await expectVisible(sessionRow, 'the sticky session')
await shot('cache-sessions')
await sessionRow.locator('[data-testid="cache-clear-session"]').click()
const confirm = page.locator('.el-message-box .confirm-ok')
if (await confirm.count()) await confirm.first().click()
await page.locator('[data-testid^="cache-session-row-"]').first().waitFor({ state: 'detached' })
const left = await api('GET', '/cache/sessions', adminToken)
if (left.total !== 0) throw new Error(`the session was not cleared: ${JSON.stringify(left)}`)
for (const tab of ['concurrency', 'unavailable', 'rate-limited']) {
  await id(`cache-tab-${tab}`).click()
  await shot(`cache-${tab}`)
}
// The data planes, with what each reports of itself.
await id('cache-tab-nodes').click()
await expectVisible(page.locator('[data-testid^="cache-node-load-"]').first(), "a data plane's load")
await shot('cache-nodes')

await nav('settings')
await shot('settings')
await id('settings-tab-prices').click()
await shot('settings-prices')
await id('settings-tab-audit').click()
await expectVisible(id('audit-table'), 'the audit log')
await shot('settings-audit')

// --- A phone-sized screen stays usable.
await page.setViewportSize({ width: 390, height: 844 })
await nav('accounts').catch(async () => {
  await id('nav-toggle').click()
  await nav('accounts')
})
await shot('accounts-phone')
await page.setViewportSize({ width: 1440, height: 900 })

// --- The user sees only their own things.
await id('user-menu').click()
await id('logout').click()
await page.waitForURL((u) => u.pathname.startsWith('/login'))
await login('webuser', 'webuser-password-1')
for (const forbidden of ['accounts', 'users', 'cache', 'settings']) {
  if (await page.locator(`[data-testid="nav-${forbidden}"]`).count()) {
    throw new Error(`a user sees the ${forbidden} page in the menu`)
  }
}
await nav('keys')
await expectVisible(page.locator('[data-testid="key-row-browser-key"]'), 'the user\'s own key')
await shot('user-keys')
await nav('logs')
await expectVisible(page.locator(`[data-testid="log-row-${requestId}"]`), 'the user\'s own request')
await shot('user-logs')
await page.goto(`${ADMIN}/accounts`)
await page.waitForURL((u) => !u.pathname.startsWith('/accounts'))
await shot('user-denied-accounts')

// --- The user changes their password and stays signed in; the old one stops working.
await id('user-menu').click()
await id('change-password').click()
await fill('password-current', 'webuser-password-1')
await fill('password-new', 'webuser-password-2')
await fill('password-repeat', 'webuser-password-2')
await shot('user-password')
await id('password-submit').click()
await expectVisible(page.locator('.el-message--success', { hasText: 'Password changed' }), 'the password-changed message')
await nav('keys')
await expectVisible(page.locator('[data-testid="key-row-browser-key"]'), 'the keys after the change')
await id('user-menu').click()
await id('logout').click()
await page.waitForURL((u) => u.pathname.startsWith('/login'))
await login('webuser', 'webuser-password-2')

if (pageErrors.length) throw new Error(`errors in the page: ${pageErrors.join('; ')}`)
await browser.close()
console.log(`console: ${step} screenshots in ${SHOTS}`)
