// Drives a running Firefox over WebDriver BiDi for tests/e2e/test_firefox.py.
//
//   node driver.mjs ws://127.0.0.1:PORT
//
// The test starts firefox-esr itself (so the profile's prefs.js, which holds
// the push UAID, is never rolled back by a launcher) and passes the endpoint
// Firefox printed ("WebDriver BiDi listening on ..."). Commands arrive as JSON
// lines on stdin, answers leave as JSON lines on stdout:
//   {"id": 1, "cmd": "open", "url": "http://localhost:8000/"}
//   {"id": 2, "cmd": "call", "name": "subscribe", "args": ["BASE64URL-KEY"]}
//   {"id": 3, "cmd": "close"}            (closes Firefox, then the driver exits)
// "call" runs window.pushTest[name](...args) in the page (see index.html).
// Forms and text (the admin view's test, tests/e2e/test_admin_view.py):
//   {"id": 4, "cmd": "type", "selector": "#token", "text": "..."}
//   {"id": 5, "cmd": "submit", "selector": "#login-submit"}   (click, wait for the next page; its URL)
//   {"id": 6, "cmd": "text", "selector": "main"}              (innerText of the first match)
//   {"id": 7, "cmd": "texts", "selector": "td.clients"}       (innerText of every match)
//   {"id": 8, "cmd": "url"}
import readline from "node:readline";
import puppeteer from "puppeteer-core";

const [endpoint] = process.argv.slice(2);
const send = (message) => process.stdout.write(JSON.stringify(message) + "\n");

const browser = await puppeteer.connect({
  browserWSEndpoint: `${endpoint}/session`, protocol: "webDriverBiDi", protocolTimeout: 30000,
});
let page = null;
send({ ready: true, version: await browser.version() });

async function run(command) {
  switch (command.cmd) {
    case "open": {
      page = page || (await browser.pages())[0] || (await browser.newPage());
      await page.goto(command.url, { waitUntil: "load", timeout: 20000 });
      return page.url();
    }
    case "call":
      return page.evaluate(
        (name, args) => window.pushTest[name](...args), command.name, command.args || [],
      );
    case "type":
      await page.type(command.selector, command.text);
      return true;
    case "submit": {
      await Promise.all([
        page.waitForNavigation({ waitUntil: "load", timeout: 20000 }),
        page.click(command.selector),
      ]);
      return page.url();
    }
    case "text":
      return page.$eval(command.selector, (element) => element.innerText);
    case "texts":
      return page.$$eval(command.selector, (elements) => elements.map((element) => element.innerText));
    case "url":
      return page.url();
    case "close":
      await browser.close();
      return true;
    default:
      throw new Error(`unknown command ${command.cmd}`);
  }
}

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  try {
    send({ id: command.id, ok: true, result: await run(command) });
  } catch (error) {
    send({ id: command.id, ok: false, error: String(error && error.stack || error) });
  }
  if (command.cmd === "close") break;
}
process.exit(0);
