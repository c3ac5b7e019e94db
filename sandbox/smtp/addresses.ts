/** Mail addresses as Exchange compares them, and the ones a mailbox may send as. */
import type { SandboxMailbox } from '../tenant';

/** An address as Exchange compares it: trimmed and case-insensitive (the tenant's mailboxes are keyed so). */
export function lower(address: string): string {
  return address.trim().toLowerCase();
}

/** The address Exchange would let `mailbox` send as: itself, or a SendAs grant for the address or its @domain. */
export function maySendAs(user: string, mailbox: SandboxMailbox | undefined, address: string): boolean {
  const wanted = lower(address);
  if (wanted === lower(user)) return true;
  if (!mailbox) return false;
  const domain = wanted.slice(wanted.lastIndexOf('@'));
  for (const grant of mailbox.sendAs) {
    const g = lower(grant);
    if (g === wanted || (g.startsWith('@') && g === domain)) return true;
  }
  return false;
}
