/** Normalises recorded function metadata into the triggers the dev host serves, resolving `%Setting%` references as the host does. */
import type { FunctionCallback, FunctionMetadata, RpcBindingInfo } from './functionsCore';

export type AuthLevel = 'anonymous' | 'function' | 'admin';

interface Common {
  name: string;
  /** The trigger binding's name (the key of its input data). */
  triggerName: string;
  metadata: FunctionMetadata;
  callback: FunctionCallback;
}

/** One registered function, normalised once at load. */
export type DevFunction =
  | (Common & { kind: 'http'; route: string; methods: string[]; authLevel: AuthLevel })
  | (Common & { kind: 'queue'; queueName: string; connection: string })
  | (Common & { kind: 'timer'; schedule: string; runOnStartup: boolean })
  | (Common & { kind: 'unsupported'; triggerType: string });

/** Replaces `%NAME%` with the app setting NAME, failing like the host's indexer when it is unset. */
export function resolveSettings(value: string, env: NodeJS.ProcessEnv, where: string): string {
  return value.replace(/%([^%]+)%/g, (_, name: string) => {
    const resolved = env[name];
    if (resolved === undefined) {
      throw new Error(`Error indexing ${where}: '%${name}%' does not resolve to a value. Set the app setting ${name}.`);
    }
    return resolved;
  });
}

function text(binding: RpcBindingInfo, key: string): string | undefined {
  const value = binding[key];
  return typeof value === 'string' && value !== '' ? value : undefined;
}

/** Turns one `registerFunction` call into a {@link DevFunction}. */
export function normalise(metadata: FunctionMetadata, callback: FunctionCallback, env: NodeJS.ProcessEnv): DevFunction {
  const entry = Object.entries(metadata.bindings).find(
    ([, b]) => b.direction === 'in' && b.type.toLowerCase().endsWith('trigger'),
  );
  if (!entry) throw new Error(`Function "${metadata.name}" has no trigger binding`);
  const [triggerName, trigger] = entry;
  const common: Common = { name: metadata.name, triggerName, metadata, callback };
  const where = `function "${metadata.name}"`;
  switch (trigger.type.toLowerCase()) {
    case 'httptrigger': {
      const methods = Array.isArray(trigger.methods) ? (trigger.methods as string[]).map((m) => m.toUpperCase()) : [];
      const authLevel = (text(trigger, 'authLevel') ?? 'anonymous').toLowerCase();
      if (authLevel !== 'anonymous' && authLevel !== 'function' && authLevel !== 'admin') {
        throw new Error(`Function "${metadata.name}": unknown authLevel "${authLevel}"`);
      }
      return {
        ...common,
        kind: 'http',
        route: resolveSettings(text(trigger, 'route') ?? metadata.name, env, where),
        methods,
        authLevel,
      };
    }
    case 'queuetrigger':
      return {
        ...common,
        kind: 'queue',
        // Queue names are lower case in Azure Storage; the host normalises them the same way.
        queueName: resolveSettings(text(trigger, 'queueName') ?? '', env, where).toLowerCase(),
        connection: resolveSettings(text(trigger, 'connection') ?? 'AzureWebJobsStorage', env, where),
      };
    case 'timertrigger':
      return {
        ...common,
        kind: 'timer',
        schedule: resolveSettings(text(trigger, 'schedule') ?? '', env, where),
        runOnStartup: trigger.runOnStartup === true,
      };
    default:
      return { ...common, kind: 'unsupported', triggerType: trigger.type };
  }
}
