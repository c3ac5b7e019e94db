/** Reads queue trigger metadata the same way for every queue function. */
import type { InvocationContext } from '@azure/functions';

/** The message's dequeueCount (1 on first delivery), or undefined when the host did not say. */
export function dequeueCountOf(context: InvocationContext): number | undefined {
  const meta = context.triggerMetadata ?? {};
  const value = meta.dequeueCount ?? meta.DequeueCount;
  const n = typeof value === 'string' ? Number(value) : value;
  return typeof n === 'number' && Number.isFinite(n) ? n : undefined;
}
