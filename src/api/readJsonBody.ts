/** Reads a JSON request body with a byte cap: the declared length is checked first, the stream is cut off at the cap. */
import { MailError } from '../errors';
import { MAX_BODY_JSON_VALUES, parseBoundedJson } from '../inputBounds';
import type { ApiRequest } from './apiTypes';

/** Room for the JSON around the base64 attachments (field names, addresses, text and HTML bodies, template data). */
export const JSON_OVERHEAD_BYTES = 1024 * 1024;
/** JSON.parse messages quote the input; keep the echo short. */
const MAX_ECHO_CHARS = 200;

/** The largest body POST /api/messages reads: the largest message, base64-grown by 4/3, plus JSON overhead. */
export function maxBodyBytes(maxMessageBytes: number): number {
  return Math.ceil((maxMessageBytes * 4) / 3) + JSON_OVERHEAD_BYTES;
}

function tooLarge(limit: number): MailError {
  return new MailError('PAYLOAD_TOO_LARGE', `The request body is over ${limit} bytes`, {
    details: [{ path: '(body)', message: `the body must be at most ${limit} bytes` }],
  });
}

function badBody(message: string): MailError {
  return new MailError('INVALID_MESSAGE', `Invalid request body: ${message}`, {
    details: [{ path: '(body)', message }],
  });
}

/** True for `application/json`, optionally with `charset=utf-8`. */
export function isJsonContentType(value: string | null): boolean {
  if (!value) return false;
  const [type, ...params] = value.split(';').map((p) => p.trim().toLowerCase());
  if (type !== 'application/json') return false;
  return params.every((p) => !p.startsWith('charset=') || /^charset="?utf-8"?$/.test(p));
}

/** The body, at most `limit` bytes (PAYLOAD_TOO_LARGE past it); an absent body is empty. */
export async function readCapped(body: ReadableStream<Uint8Array> | null, limit: number): Promise<Buffer> {
  if (!body) return Buffer.alloc(0);
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > limit) {
      await reader.cancel().catch(() => undefined);
      throw tooLarge(limit);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks, total);
}

/**
 * The parsed JSON body. Throws MailError UNSUPPORTED_MEDIA_TYPE (not application/json), PAYLOAD_TOO_LARGE (over
 * `limit` bytes, by Content-Length or by what arrived) or INVALID_MESSAGE naming `(body)` (empty, not UTF-8, not JSON)
 * or the field nested deeper than MAX_JSON_DEPTH, or holding more than `maxValues` values — checked on the text,
 * before JSON.parse spends time on a structure that would be refused (see scanJsonText in src/inputBounds.ts).
 */
export async function readJsonBody(
  request: ApiRequest,
  limit: number,
  maxValues: number = MAX_BODY_JSON_VALUES,
): Promise<unknown> {
  if (!isJsonContentType(request.headers.get('content-type'))) {
    throw new MailError('UNSUPPORTED_MEDIA_TYPE', 'The request body must be JSON (Content-Type: application/json)', {
      details: [{ path: 'Content-Type', message: 'must be application/json (UTF-8)' }],
    });
  }
  const declared = request.headers.get('content-length');
  if (declared !== null && Number(declared) > limit) throw tooLarge(limit);
  const bytes = await readCapped(request.body, limit);
  if (bytes.length === 0) throw badBody('the body is empty: send a JSON object');
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw badBody('the body is not valid UTF-8');
  }
  try {
    return parseBoundedJson(text, { maxValues });
  } catch (error) {
    if (error instanceof MailError) throw error;
    const reason = error instanceof Error ? error.message.slice(0, MAX_ECHO_CHARS) : 'parse error';
    throw badBody(`the body is not valid JSON (${reason})`);
  }
}
