/** The HTML part of a received message as the inbox's iframe loads it: no script, no remote load, cid: images from the attachment route. */
import type PostalMime from 'postal-mime';

/**
 * The policy of the HTML part's document. Nothing loads but inline styles, data: images and the message's own
 * attachments (from the inbox itself); `sandbox` without tokens gives the document an opaque origin and no script,
 * forms or popups even when it is opened on its own rather than in the page's `<iframe sandbox>`.
 */
export function messageDocumentCsp(inboxOrigin: string): string {
  return [
    "default-src 'none'",
    `img-src data: cid: ${inboxOrigin}`,
    "style-src 'unsafe-inline'",
    'font-src data:',
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'self'",
    'sandbox',
  ].join('; ');
}

/** The Content-ID of `attachment` without its angle brackets, as a `cid:` URL names it. */
function bareContentId(attachment: PostalMime.Attachment): string | undefined {
  const id = attachment.contentId?.trim().replace(/^<|>$/g, '');
  return id || undefined;
}

/**
 * The HTML part with every `cid:` reference to one of the message's parts pointed at that part's download route
 * (`attachmentUrl(index)`); a `cid:` naming no part stays as it is, and loads nothing.
 */
export function rewriteCidReferences(
  html: string,
  attachments: PostalMime.Attachment[],
  attachmentUrl: (index: number) => string,
): string {
  const byContentId = new Map<string, number>();
  attachments.forEach((attachment, index) => {
    const id = bareContentId(attachment);
    if (id !== undefined && !byContentId.has(id.toLowerCase())) byContentId.set(id.toLowerCase(), index);
  });
  if (byContentId.size === 0) return html;
  return html.replace(/\bcid:([^\s"'<>)]+)/gi, (whole, id: string) => {
    let decoded = id;
    try {
      decoded = decodeURIComponent(id);
    } catch {
      // A malformed escape: the id as written.
    }
    const index = byContentId.get(decoded.toLowerCase());
    return index === undefined ? whole : attachmentUrl(index);
  });
}
