/**
 * The fault suite at scale (`npm run bench -- --only=faults`; `--quick` is the CI scale): the scenario of
 * test/support/faultRun.ts, its progress while it runs (dev/progress.ts), and each figure against its target.
 */
import { Progress } from '../dev/progress';
import { CI_SCALE, FULL_SCALE, runFaultScenario, type FaultRunResult } from '../test/support/faultRun';

/** One row of the table: the figure, its value, the target and PASS / FALLS SHORT (empty for figures without one). */
export interface FaultRow {
  figure: string;
  value: string;
  target: string;
  verdict: '' | 'PASS' | 'FALLS SHORT';
}

export type FaultFigures = Omit<FaultRunResult, 'logTails' | 'duplicateDetails'> & {
  /** The first duplicates, each with the kill (index into `kills`) that explains each extra copy. */
  duplicateDetails: FaultRunResult['duplicateDetails'];
  rows: FaultRow[];
  verdict: 'PASS' | 'FALLS SHORT';
};

const seconds = (ms: number) => `${Math.round(ms / 100) / 10} s`;
const verdict = (ok: boolean): FaultRow['verdict'] => (ok ? 'PASS' : 'FALLS SHORT');

/** The table rows of a run: every target of the fault suite, and the figures that explain them. */
export function faultRows(r: FaultRunResult): FaultRow[] {
  const byCode = Object.entries(r.failedByCode)
    .map(([code, n]) => `${code} ${n}`)
    .join(', ');
  const injected = Object.entries(r.injected)
    .filter(([, n]) => n > 0)
    .map(([kind, n]) => `${kind} ${n}`)
    .join(', ');
  return [
    {
      figure: 'accepted over HTTP (202)',
      value: `${r.accepted} of ${r.requested} (${r.acceptRetries} POSTs repeated with their key)`,
      target: 'all',
      verdict: verdict(r.accepted === r.requested),
    },
    { figure: 'sent', value: String(r.sent), target: '', verdict: '' },
    {
      figure: 'failed, by code',
      value: r.failed > 0 ? `${r.failed} (${byCode})` : '0',
      target: 'classified, after retries',
      verdict: verdict(r.unclassifiedFailures === 0 && r.failedWithoutRetries === 0),
    },
    { figure: 'lost', value: String(r.lost), target: '0', verdict: verdict(r.lost === 0) },
    {
      figure: 'stuck (queued, scheduled or sending)',
      value: String(r.stuck),
      target: '0',
      verdict: verdict(r.stuck === 0 && !r.deadlineHit),
    },
    {
      figure: 'instances SIGKILLed and replaced',
      value: String(r.kills.length),
      target: '>= 1',
      verdict: verdict(r.kills.length >= 1),
    },
    {
      figure: 'duplicates (extra copies), explained by a kill',
      value: `${r.duplicates}, ${r.duplicates - r.unexplainedDuplicates} explained`,
      target: 'all explained',
      verdict: verdict(r.unexplainedDuplicates === 0),
    },
    {
      figure: 'duplicate rate per kill',
      value: r.kills.length > 0 ? r.duplicateRatePerKill.toFixed(3) : '-',
      target: '',
      verdict: '',
    },
    {
      figure: 'kills with an SMTP session open / with a duplicate',
      value: `${r.kills.filter((k) => k.sessionsOpen > 0).length} / ${r.kills.filter((k) => k.duplicates > 0).length}`,
      target: '',
      verdict: '',
    },
    {
      figure: 'SMTP transactions meeting a transient fault',
      value: `${(r.faultRate * 100).toFixed(1)} % of ${r.transactions} (${injected})`,
      target: `about ${Math.round(r.scale.faultFraction * 100)} %`,
      verdict: verdict(Math.abs(r.faultRate - r.scale.faultFraction) <= r.scale.faultFraction * 0.25),
    },
    {
      figure: 'rate violations (most sends in any window)',
      value: `${r.rateViolations} (${r.maxInAnyWindow} of ${r.scale.ratePerWindow} per ${r.scale.windowMs / 1000} s)`,
      target: '0',
      verdict: verdict(r.rateViolations === 0 && r.maxInAnyWindow <= r.scale.ratePerWindow),
    },
    {
      figure: '432 4.3.2: forced by the sandbox / self-caused',
      value: `${r.forced432} / ${r.selfCaused432} (session-limit violations ${r.connectionViolations})`,
      target: 'self-caused 0',
      verdict: verdict(r.selfCaused432 === 0 && r.connectionViolations === 0),
    },
    {
      figure: 'peak concurrent SMTP sessions',
      value: String(r.peakSessions),
      target: '<= 3',
      verdict: verdict(r.peakSessions <= 3),
    },
    {
      figure: `Key Vault down ${seconds(r.scale.keyVaultOutage.durationMs)}: 503s (instances started in it)`,
      value: `${r.keyVault503} (${r.restartsDuringKeyVaultOutage})`,
      target: '> 0',
      verdict: verdict(r.keyVault503 > 0),
    },
    {
      figure: 'Entra ID token endpoint: 5xx answered (bursts)',
      value: `${r.entra5xx} (${r.entraBurstCount})`,
      target: '> 0',
      verdict: verdict(r.entra5xx > 0),
    },
    {
      figure: 'secrets in any output',
      value: `${r.leaks.length === 0 ? '0' : r.leaks.join('; ')} (scanned: ${Object.entries(r.scannedBytes)
        .map(([source, bytes]) => `${source} ${Math.round(bytes / 1024)} KiB`)
        .join(', ')})`,
      target: '0',
      verdict: verdict(r.leaks.length === 0),
    },
    { figure: 'most attempts of one message', value: String(r.maxAttempts), target: '', verdict: '' },
    {
      figure: 'wall time: accept / until every message is sent or failed',
      value: `${seconds(r.acceptMs)} / ${seconds(r.wallMs)}`,
      target: '',
      verdict: '',
    },
  ];
}

/** Runs the fault suite at full scale (or the CI scale with `quick`) and returns its figures and table rows. */
export async function runFaultsBench(options: { quick?: boolean } = {}): Promise<FaultFigures> {
  const scale = options.quick ? CI_SCALE : FULL_SCALE;
  // Finished (sent or failed) of the messages requested; what is accepted, pending and killed so far beside it.
  const progress = new Progress({ label: 'faults: messages finished', total: scale.messages, unit: 'messages' });
  let result: FaultRunResult;
  try {
    result = await runFaultScenario(scale, {
      onProgress: (p) =>
        progress.update(
          p.sent + p.failed,
          `accepted ${p.accepted}, failed ${p.failed}, pending ${p.pending}, kills ${p.kills}`,
        ),
      progressEveryMs: 1_000,
    });
  } finally {
    progress.done();
  }
  const { logTails, duplicateDetails, ...figures } = result;
  const rows = faultRows(result);
  const failing = rows.some((row) => row.verdict === 'FALLS SHORT');
  if (failing) process.stderr.write(`fault suite: the end of the instances' logs:\n${logTails.join('\n---\n')}\n`);
  return {
    ...figures,
    duplicateDetails: duplicateDetails.slice(0, 50),
    rows,
    verdict: failing ? 'FALLS SHORT' : 'PASS',
  };
}
