// Service worker of the Firefox end-to-end test (tests/e2e/test_firefox.py).
// Firefox hands the push event the plaintext it decrypted itself; the worker
// keeps it in Cache Storage (the page reads it even after a restart), posts it
// to every open page, and reports it to the test's HTTP server.
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  const text = event.data ? event.data.text() : null;
  const report = { text, at: Date.now() };
  event.waitUntil((async () => {
    const cache = await caches.open("received");
    await cache.put(`/received/${report.at}-${Math.random()}`, new Response(JSON.stringify(report)));
    const pages = await self.clients.matchAll({ includeUncontrolled: true, type: "window" });
    for (const page of pages) page.postMessage({ type: "push", ...report });
    try {
      await fetch("/report", { method: "POST", body: JSON.stringify(report) });
    } catch (error) {
      // The page and the cache still have it.
    }
  })());
});
