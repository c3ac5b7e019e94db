/** Reads an InvocationContext the same way for every function: its ids, its trace, and the log methods the host attributes to it. */
import type { InvocationContext } from '@azure/functions';
import type { AppServices } from '../src/appServices';
import { invocationFrom, type Invocation, type TriggerInvocation } from '../src/invocation';
import type { Logger } from '../src/logger';

/** The invocation's ids, traceparent and log methods, before the app's services (and their redactor) exist. */
export function triggerInvocation(context: InvocationContext): TriggerInvocation {
  return {
    invocationId: context.invocationId,
    traceParent: context.traceContext?.traceParent ?? undefined,
    log: {
      debug: (line) => context.debug(line),
      info: (line) => context.log(line),
      warn: (line) => context.warn(line),
      error: (line) => context.error(line),
    },
  };
}

/** The Invocation the core takes: the context's ids and a redacting logger writing to the context. */
export function invocationOf(
  context: InvocationContext,
  services: Pick<AppServices, 'redactor' | 'logger'>,
): Invocation & { logger: Logger } {
  const invocation = invocationFrom(triggerInvocation(context), services.redactor);
  return { ...invocation, logger: invocation.logger ?? services.logger };
}
