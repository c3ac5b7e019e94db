/** The Content-Disposition of an attachment download: a filename that cannot break out of the header, in ASCII and in UTF-8. */

/** Longest filename kept; a longer one is cut (its extension may go with it, the download still works). */
const MAX_FILENAME_CHARS = 200;
const FALLBACK_FILENAME = 'attachment';

/** The name without any directory part, control characters or surrounding dots and spaces; `attachment` when nothing is left. */
export function safeFilename(filename: string | null | undefined): string {
  const base = (filename ?? '').split(/[\\/]/).pop() ?? '';
  const cleaned = base.replace(/[\u0000-\u001f\u007f-\u009f]/g, '').replace(/^[\s.]+|[\s.]+$/g, '');
  const cut = [...cleaned].slice(0, MAX_FILENAME_CHARS).join('');
  return cut || FALLBACK_FILENAME;
}

/** RFC 8187 `value-chars`: what encodeURIComponent leaves alone, less the characters it allows and attr-char does not. */
function encodeRfc8187(value: string): string {
  return encodeURIComponent(value).replace(/['()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/**
 * `attachment; filename="…"; filename*=UTF-8''…` (RFC 6266): the quoted name is printable ASCII without `"` or `\`
 * (anything else becomes `_`) for old clients, the starred one the exact name for the rest.
 */
export function contentDisposition(filename: string | null | undefined): string {
  const name = safeFilename(filename);
  const ascii = name.replace(/[^\x20-\x7e]|["\\]/g, '_');
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encodeRfc8187(name)}`;
}
