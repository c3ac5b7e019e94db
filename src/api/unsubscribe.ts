/**
 * `/api/unsubscribe?t=…` (anonymous: the link in a bulk message). GET shows a confirmation page with a button and
 * changes nothing (link scanners follow GETs); POST records the suppression and answers 200, idempotently. The POST
 * needs no body; the RFC 8058 one-click form body `List-Unsubscribe=One-Click` is accepted too.
 */
import { MailError } from '../errors';
import type { AppServices } from '../appServices';
import { invocationLogger, type Invocation } from '../invocation';
import { MAX_TOKEN_CHARS } from '../suppression/unsubscribeToken';
import { confirmationPage, invalidLinkPage, PAGE_HEADERS, unsubscribedPage } from '../suppression/unsubscribePage';
import type { ApiRequest, ApiResponse } from './apiTypes';
import { readCapped } from './readJsonBody';

/** The one-click body is 26 bytes; room for a browser's form encoding of it, and nothing more. */
export const MAX_UNSUBSCRIBE_BODY_BYTES = 1024;
const ONE_CLICK = 'List-Unsubscribe=One-Click';

/** The token, or the invalid-link answer. The query value is bounded before it is looked at further. */
async function claimOf(request: ApiRequest, services: AppServices) {
  const token = request.query.get('t');
  if (token !== null && token.length > MAX_TOKEN_CHARS) {
    throw new MailError('UNSUBSCRIBE_TOKEN_INVALID', 'Invalid unsubscribe link: t is too long', {
      details: [{ path: 't', message: `must be at most ${MAX_TOKEN_CHARS} characters` }],
    });
  }
  return { token: token ?? '', claim: await services.unsubscribe.verify(token ?? '') };
}

/**
 * The HTML answer for a refused link when a browser asks (GET, or the page's POST), or undefined: then the error is
 * thrown and answered as JSON naming `t` (a mail provider's one-click POST).
 */
function invalidLink(request: ApiRequest, error: unknown): ApiResponse | undefined {
  if (!(error instanceof MailError) || error.code !== 'UNSUBSCRIBE_TOKEN_INVALID') return undefined;
  const accept = request.headers.get('accept') ?? '';
  if (request.method.toUpperCase() === 'POST' && !accept.slice(0, 1000).includes('text/html')) return undefined;
  return { status: 400, headers: PAGE_HEADERS, body: invalidLinkPage(error.details?.[0]?.message ?? 'is not valid') };
}

/** Handles GET /api/unsubscribe?t=…: the confirmation page; records nothing. */
export async function getUnsubscribe(request: ApiRequest, services: AppServices): Promise<ApiResponse> {
  try {
    const { token, claim } = await claimOf(request, services);
    return {
      status: 200,
      headers: PAGE_HEADERS,
      body: confirmationPage({ address: claim.address, list: claim.list, token }),
    };
  } catch (error) {
    const answer = invalidLink(request, error);
    if (answer) return answer;
    throw error;
  }
}

/** Checks the optional body: empty, or the one-click form field (its value percent-encoded or not). */
async function readOneClickBody(request: ApiRequest): Promise<void> {
  const declared = request.headers.get('content-length');
  if (declared !== null && Number(declared) > MAX_UNSUBSCRIBE_BODY_BYTES) {
    throw new MailError('PAYLOAD_TOO_LARGE', `The request body is over ${MAX_UNSUBSCRIBE_BODY_BYTES} bytes`, {
      details: [{ path: '(body)', message: `send no body, or ${ONE_CLICK}` }],
    });
  }
  const text = (await readCapped(request.body, MAX_UNSUBSCRIBE_BODY_BYTES)).toString('latin1').trim();
  if (text === '' || text === ONE_CLICK || text === 'List-Unsubscribe=One%2DClick') return;
  throw new MailError('INVALID_MESSAGE', `The body must be empty or ${ONE_CLICK}`, {
    details: [{ path: 'List-Unsubscribe', message: `send no body, or the form field ${ONE_CLICK}` }],
  });
}

/** Handles POST /api/unsubscribe?t=…: records the suppression of the token's address from its list; 200. */
export async function postUnsubscribe(
  request: ApiRequest,
  services: AppServices,
  invocation: Invocation = {},
): Promise<ApiResponse> {
  // The token first: a bad link is refused whatever the body.
  let verified;
  try {
    verified = await claimOf(request, services);
  } catch (error) {
    const answer = invalidLink(request, error);
    if (answer) return answer;
    throw error;
  }
  await readOneClickBody(request);
  const { claim } = verified;
  await services.storage.ensureResources();
  const added = await services.suppressions.add({
    address: claim.address,
    list: claim.list,
    source: 'unsubscribe',
    createdAt: new Date(services.now()).toISOString(),
  });
  // The list only: the address is the recipient's, and logs keep no addresses.
  invocationLogger(invocation, services.logger).info('unsubscribed from a bulk list', {
    list: claim.list,
    alreadySuppressed: !added,
  });
  return { status: 200, headers: PAGE_HEADERS, body: unsubscribedPage(claim) };
}

/** Handles /api/unsubscribe: GET or POST. */
export function unsubscribe(
  request: ApiRequest,
  services: AppServices,
  invocation: Invocation = {},
): Promise<ApiResponse> {
  return request.method.toUpperCase() === 'POST'
    ? postUnsubscribe(request, services, invocation)
    : getUnsubscribe(request, services);
}
