/**
 * Test support: the app in process against a sandbox and an Azurite of its own (free ports, so suites run in
 * parallel). `startStack` is the setup the integration suites share: start both, build the app settings from them,
 * create the app with a sandbox mailer whose log lines are captured, and tear all of it down with one `close()`.
 */
import { startAzurite, type AzuriteInstance, type AzuriteOptions } from '../../dev/azurite';
import { createAppServices, type AppServices, type AppServicesOptions } from '../../src/appServices';
import type { Config } from '../../src/config';
import { sandboxMailer, startSandbox, type Sandbox, type SandboxOptions, type TestMailer } from './sandboxMailer';

/** App settings, by name. */
export type Settings = Record<string, string>;

/** A running sandbox and Azurite. */
export interface Services {
  sandbox: Sandbox;
  azurite: AzuriteInstance;
  /** Closes the sandbox and stops Azurite. */
  close(): Promise<void>;
}

export interface ServicesOptions {
  sandbox?: SandboxOptions;
  azurite?: AzuriteOptions;
}

/** Starts a sandbox and Azurite side by side. If one fails to start, the other is closed before the error is thrown. */
export async function startServices(options: ServicesOptions = {}): Promise<Services> {
  const [sandbox, azurite] = await Promise.allSettled([startSandbox(options.sandbox), startAzurite(options.azurite)]);
  if (sandbox.status === 'rejected' || azurite.status === 'rejected') {
    // One of them started: it must not outlive the failure of the other.
    if (sandbox.status === 'fulfilled') await sandbox.value.close();
    if (azurite.status === 'fulfilled') await azurite.value.stop();
    throw sandbox.status === 'rejected' ? sandbox.reason : (azurite as PromiseRejectedResult).reason;
  }
  return {
    sandbox: sandbox.value,
    azurite: azurite.value,
    close: async () => {
      await Promise.all([sandbox.value.close(), azurite.value.stop()]);
    },
  };
}

/** The app's settings against `services`: the sandbox's tenant and mailbox, Azurite's storage, then `overrides`. */
export function appSettings(services: Pick<Services, 'sandbox' | 'azurite'>, overrides: Settings = {}): Settings {
  return {
    ...services.sandbox.settings(),
    AzureWebJobsStorage: services.azurite.connectionString,
    ...overrides,
  };
}

/** The app's app in this process, built from `settings`. */
export interface StackApp {
  /** The app settings the app was built from. */
  settings: Settings;
  config: Config;
  app: AppServices;
  /** The app's mailer: a sandbox mailer (client-secret) built from the same settings. */
  mailer: TestMailer;
  /** Every log line of the app and its mailer, at debug level. */
  logs: string[];
  /** Closes the app (its SMTP pool and telemetry). */
  close(): Promise<void>;
}

export interface AppStartOptions {
  /** Delivery tuning (lease, attempts, back-off), as createAppServices takes it. */
  delivery?: AppServicesOptions['delivery'];
}

/**
 * Builds the app against running `services` with `overrides` over {@link appSettings}, and creates its storage
 * resources. On a failure the app is closed again; the services are the caller's.
 */
export async function startApp(
  services: Pick<Services, 'sandbox' | 'azurite'>,
  overrides: Settings = {},
  options: AppStartOptions = {},
): Promise<StackApp> {
  const settings = appSettings(services, overrides);
  const mailer = sandboxMailer(services.sandbox, 'client-secret', settings);
  let app: AppServices;
  try {
    app = createAppServices(settings, {
      mailer,
      logger: mailer.logger,
      ...(options.delivery ? { delivery: options.delivery } : {}),
    });
  } catch (error) {
    await mailer.close();
    throw error;
  }
  try {
    await app.storage.ensureResources();
  } catch (error) {
    await app.close();
    throw error;
  }
  return { settings, config: app.config, app, mailer, logs: mailer.logs, close: () => app.close() };
}

/** App settings for {@link startStack}; a function when they depend on what started (the tenant's domain, Azurite's ports). */
export type StackOverrides = Settings | ((services: Services) => Settings | Promise<Settings>);

export interface StackOptions extends ServicesOptions, AppStartOptions {}

/** A sandbox, Azurite, and the app's app against both. */
export interface Stack extends Services, StackApp {
  /** Closes the app, then the sandbox and Azurite. */
  close(): Promise<void>;
}

/**
 * Starts a sandbox and Azurite, and the app's app against them with `overrides` over their settings. Whatever
 * started is closed again if a later step fails.
 */
export async function startStack(overrides: StackOverrides = {}, options: StackOptions = {}): Promise<Stack> {
  const services = await startServices(options);
  let app: StackApp;
  try {
    const settings = typeof overrides === 'function' ? await overrides(services) : overrides;
    app = await startApp(services, settings, options);
  } catch (error) {
    await services.close();
    throw error;
  }
  return {
    ...services,
    ...app,
    close: async () => {
      try {
        await app.close();
      } finally {
        await services.close();
      }
    },
  };
}
