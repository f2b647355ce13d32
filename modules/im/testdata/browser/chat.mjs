// Browser test of the im web demo, run by modules/im/web_test.go:
//   node chat.mjs <page url> [password for alice] [password for bob]
// Two users chat in two browser contexts of Debian's chromium. Every step
// waits for what the other side must show; the waits are generous upper
// bounds for a loaded machine, not speed limits.
import { chromium } from 'playwright-core';

const [page0, pwA, pwB] = process.argv.slice(2);
if (!page0) {
  console.error('usage: node chat.mjs <page url> [password alice] [password bob]');
  process.exit(2);
}
const WAIT = 60_000;

const browser = await chromium.launch({
  executablePath: process.env.COLONY_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox'],
});

function step(msg) { console.log(`step: ${msg}`); }

async function open(name, user, password, checkWrong = false) {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') console.log(`[${name} ${m.type()}] ${m.text()}`); });
  page.on('pageerror', (e) => console.log(`[${name} pageerror] ${e}`));
  await page.goto(page0);
  await page.fill('#user', user);
  if (password !== undefined) {
    await page.locator('#password').waitFor({ state: 'visible' });
    if (checkWrong) { // a wrong password is refused with a message, and the form stays
      await page.fill('#password', `not-${password}`);
      await page.click('#login-go');
      await page.locator('#login-error', { hasText: 'Cannot connect' }).waitFor();
    }
    await page.fill('#password', password);
  }
  await page.click('#login-go');
  // Either the app shows, or the form says why not: report that at once.
  const refused = page.locator('#login-error').filter({ hasText: /./ });
  await Promise.race([page.locator('#app').waitFor({ state: 'visible' }), refused.waitFor()]);
  if (await refused.count()) throw new Error(`${name}: login failed: ${await refused.textContent()}`);
  await page.locator('#conn[data-state="online"]').waitFor();
  const me = await page.textContent('#me');
  if (me !== user) throw new Error(`${name}: logged in as ${me}, want ${user}`);
  return { ctx, page };
}

let failed = false;
try {
  step('alice and bob log in');
  const a = await open('alice', 'alice', pwA, true);
  const b = await open('bob', 'bob', pwB);

  step('alice opens a direct chat with bob and sees him online');
  await a.page.fill('#new-direct', 'bob');
  await a.page.click('#new-direct-go');
  await a.page.locator('#chat-title', { hasText: 'bob' }).waitFor();
  await a.page.locator('#peer-status[data-state="online"]').waitFor();

  step('bob gets the conversation and opens it');
  await b.page.locator('.conv[data-peer="alice"]').click();
  await b.page.locator('#chat-title', { hasText: 'alice' }).waitFor();

  step('alice types; bob sees her typing');
  await a.page.locator('#composer').pressSequentially('hello bob');
  await b.page.locator('#peer-status[data-state="typing"]').waitFor();

  step('alice sends; bob sees the message');
  await a.page.press('#composer', 'Enter');
  await b.page.locator('.msg[data-from="alice"] .text', { hasText: 'hello bob' }).waitFor();

  step('bob has it on screen: alice sees it read');
  await a.page.locator('.msg.mine[data-status="read"] .text', { hasText: 'hello bob' }).waitFor();

  step('bob answers; alice sees it');
  await b.page.fill('#composer', 'hi alice');
  await b.page.click('#send');
  await a.page.locator('.msg[data-from="bob"] .text', { hasText: 'hi alice' }).waitFor();
  await b.page.locator('.msg.mine[data-status="read"] .text', { hasText: 'hi alice' }).waitFor();

  step('alice makes a group with bob; bob reads in it');
  await a.page.fill('#new-group-title', 'team');
  await a.page.fill('#new-group-members', 'bob');
  await a.page.click('#new-group-go');
  await a.page.locator('#chat-title', { hasText: 'team' }).waitFor();
  await a.page.fill('#composer', 'hello team');
  await a.page.press('#composer', 'Enter');
  await b.page.locator('.conv[data-kind="group"] .name', { hasText: 'team' }).click();
  await b.page.locator('.msg[data-from="alice"] .text', { hasText: 'hello team' }).waitFor();
  await a.page.locator('.msg.mine[data-status="read"] .text', { hasText: 'hello team' }).waitFor();

  if (process.env.COLONY_SCREENSHOTS) { // a directory: see what the pages look like
    await a.page.screenshot({ path: `${process.env.COLONY_SCREENSHOTS}/alice.png` });
    await b.page.screenshot({ path: `${process.env.COLONY_SCREENSHOTS}/bob.png` });
  }

  step('bob leaves: alice sees him offline with a last-seen time');
  await a.page.locator('.conv[data-peer="bob"]').click();
  await a.page.locator('#peer-status[data-state="online"]').waitFor();
  await b.ctx.close();
  await a.page.locator('#peer-status[data-state="offline"]', { hasText: 'last seen' }).waitFor();
  await a.page.locator('.conv[data-peer="bob"] .dot[data-online="false"]').waitFor();

  step('bob comes back: alice sees him online, he has the history');
  const b2 = await open('bob again', 'bob', pwB);
  await a.page.locator('#peer-status[data-state="online"]').waitFor();
  await b2.page.locator('.conv[data-peer="alice"]').click();
  await b2.page.locator('.msg[data-from="alice"] .text', { hasText: 'hello bob' }).waitFor();
  await b2.page.locator('.msg.mine .text', { hasText: 'hi alice' }).waitFor();
  console.log('ok');
} catch (e) {
  failed = true;
  console.error(`FAIL: ${e.stack || e}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
