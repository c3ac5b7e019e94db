/**
 * The pages of `/api/unsubscribe`: the confirmation a GET shows (a button that POSTs: a GET alone never
 * unsubscribes), the answer to the POST, and the page for a link that is not valid. Self-contained: no script, no
 * external asset, every value HTML-escaped, and a Content-Security-Policy that allows only the inline style (by its
 * hash) and a form posting back to this app.
 */
import { createHash } from 'node:crypto';

const STYLE =
  'body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}' +
  'button{font-size:1rem;padding:.6rem 1.2rem;cursor:pointer}.muted{color:#666;font-size:.9rem}';
const STYLE_HASH = createHash('sha256').update(STYLE).digest('base64');

/** The policy of every page: nothing loads, the one inline style by its hash, forms post to this app only. */
export const UNSUBSCRIBE_CSP = [
  "default-src 'none'",
  `style-src 'sha256-${STYLE_HASH}'`,
  "form-action 'self'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** Headers of every page: the token is in the URL, so no referrer leaves it and no cache keeps it. */
export const PAGE_HEADERS: Record<string, string> = {
  'Content-Type': 'text/html; charset=utf-8',
  'Content-Security-Policy': UNSUBSCRIBE_CSP,
  'Cache-Control': 'no-store',
  'Referrer-Policy': 'no-referrer',
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
};

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** HTML-escapes text for element content and double-quoted attributes. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c] as string);
}

function page(title: string, body: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>${escapeHtml(title)}</title>
<style>${STYLE}</style>
</head>
<body>
${body}
</body>
</html>
`;
}

/** The GET page: who, which list, and a button that POSTs the one-click form back to the same link. */
export function confirmationPage(options: { address: string; list: string; token: string }): string {
  const action = `?t=${encodeURIComponent(options.token)}`;
  return page(
    'Unsubscribe',
    `<main>
<h1>Unsubscribe</h1>
<p>Stop sending <strong id="list">${escapeHtml(options.list)}</strong> mail to <strong id="address">${escapeHtml(options.address)}</strong>?</p>
<form method="post" action="${escapeHtml(action)}">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit" id="unsubscribe">Unsubscribe</button>
</form>
<p class="muted">Nothing changes until you press the button.</p>
</main>`,
  );
}

/** The answer to the POST. */
export function unsubscribedPage(options: { address: string; list: string }): string {
  return page(
    'Unsubscribed',
    `<main>
<h1 id="done">You are unsubscribed</h1>
<p><strong>${escapeHtml(options.address)}</strong> will get no more <strong>${escapeHtml(options.list)}</strong> mail.</p>
</main>`,
  );
}

/** A link that is not valid (malformed, altered, expired): says so, naming `t`, and records nothing. */
export function invalidLinkPage(reason: string): string {
  return page(
    'Unsubscribe link not valid',
    `<main>
<h1>This unsubscribe link is not valid</h1>
<p>The link's token (t) ${escapeHtml(reason)}. Use the unsubscribe link of a more recent message.</p>
</main>`,
  );
}
