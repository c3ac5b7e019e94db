/**
 * scripts/setup-exchange.ps1, checked without PowerShell (which cannot be installed here): parsed by the tree-sitter
 * PowerShell grammar, then its parameters and commands checked against the app: every change behind ShouldProcess
 * (-WhatIf), every change preceded by a read of the same state (idempotent), the Enterprise Application's object id.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { AUTH_MODES } from '../../src/config';
import { TOKEN_EXCHANGE_SCOPE } from '../../src/sender/smtpAuth';

/** The parts of tree-sitter's node API used here. */
interface SyntaxNode {
  type: string;
  text: string;
  isMissing: boolean;
  parent: SyntaxNode | null;
  children: SyntaxNode[];
  namedChildren: SyntaxNode[];
  previousNamedSibling: SyntaxNode | null;
  startPosition: { row: number; column: number };
  hasError: boolean;
}
interface Parser {
  parse(source: string): { rootNode: SyntaxNode };
}

const SCRIPT = path.resolve(__dirname, '../..', 'scripts', 'setup-exchange.ps1');
const source = readFileSync(SCRIPT, 'utf8');
let parse: (text: string) => SyntaxNode;

beforeAll(async () => {
  // Both packages are ES modules with prebuilt native parsers (no compiler or download needed).
  const { default: TreeSitter } = (await import('tree-sitter')) as unknown as {
    default: new () => Parser & { setLanguage(language: unknown): void };
  };
  const { default: PowerShell } = (await import('tree-sitter-powershell/bindings/node/index.js')) as unknown as {
    default: unknown;
  };
  const parser = new TreeSitter();
  parser.setLanguage(PowerShell);
  parse = (text) => parser.parse(text).rootNode;
});

function nodes(root: SyntaxNode, type: string): SyntaxNode[] {
  const found: SyntaxNode[] = [];
  const walk = (n: SyntaxNode) => {
    if (n.type === type) found.push(n);
    n.children.forEach(walk);
  };
  walk(root);
  return found;
}

/** Syntax errors: ERROR nodes and tokens the parser had to invent, with their line. */
function syntaxErrors(root: SyntaxNode): string[] {
  const errors: string[] = [];
  const walk = (n: SyntaxNode) => {
    if (n.type === 'ERROR' || n.isMissing) errors.push(`line ${n.startPosition.row + 1}: ${n.text.slice(0, 60)}`);
    n.children.forEach(walk);
  };
  walk(root);
  return errors;
}

/** Every command invocation, by name, with its node. */
function commands(root: SyntaxNode): Array<{ name: string; node: SyntaxNode }> {
  return nodes(root, 'command').map((node) => ({
    name: node.namedChildren.find((c) => c.type === 'command_name')?.text ?? '',
    node,
  }));
}

/** Commands that change the tenant (Set-StrictMode only changes this session). */
const isChange = (name: string) => /^(New|Add|Set|Remove|Update|Grant)-/.test(name) && name !== 'Set-StrictMode';

/** True when `node` runs only inside `if ($PSCmdlet.ShouldProcess(...))` (or its elseif form). */
function guardedByShouldProcess(node: SyntaxNode): boolean {
  for (let n: SyntaxNode | null = node; n; n = n.parent) {
    if (n.type !== 'statement_block') continue;
    const owner = n.parent;
    if (owner?.type !== 'if_statement' && owner?.type !== 'elseif_clause') continue;
    if (/\$PSCmdlet\.ShouldProcess\(/i.test(n.previousNamedSibling?.text ?? '')) return true;
  }
  return false;
}

/** The changing commands not behind ShouldProcess, as `name (line N)`. */
function unguardedChanges(root: SyntaxNode): string[] {
  return commands(root)
    .filter((c) => isChange(c.name) && !guardedByShouldProcess(c.node))
    .map((c) => `${c.name} (line ${c.node.startPosition.row + 1})`);
}

/** The value given to `-name` in a command (the element after the parameter token). */
function argument(command: SyntaxNode, name: string): string | undefined {
  const elements = command.namedChildren.find((c) => c.type === 'command_elements')?.namedChildren ?? [];
  const i = elements.findIndex(
    (e) => e.type === 'command_parameter' && e.text.toLowerCase() === `-${name}`.toLowerCase(),
  );
  return i < 0 ? undefined : elements.slice(i + 1).find((e) => e.type !== 'command_argument_sep')?.text;
}

describe('scripts/setup-exchange.ps1', () => {
  it('parses with no syntax error; the checks below do find errors and unguarded changes in a broken script', () => {
    const root = parse(source);
    expect(syntaxErrors(root)).toEqual([]);
    expect(root.hasError).toBe(false);
    // The same checks, on scripts known to be wrong.
    expect(syntaxErrors(parse('function f { if ($x { Write-Host 1 }\n'))).not.toEqual([]);
    expect(
      unguardedChanges(
        parse(
          'if ($PSCmdlet.ShouldProcess("m", "x")) { Add-MailboxPermission -Identity m -User u -AccessRights FullAccess }\nelse { Set-CASMailbox -Identity m }\nAdd-RecipientPermission -Identity a -Trustee m\n',
        ),
      ),
    ).toEqual(['Set-CASMailbox (line 2)', 'Add-RecipientPermission (line 3)']);
  });

  it('takes tenant, app id, mailbox, allowed From and the auth mode (the app’s own modes) and supports -WhatIf', () => {
    const root = parse(source);
    const paramBlock = nodes(root, 'param_block')[0]!;
    expect(paramBlock.text).toMatch(/\[CmdletBinding\(SupportsShouldProcess = \$true\)\]/);
    const params = nodes(paramBlock, 'script_parameter').map(
      (p) => p.namedChildren.find((c) => c.type === 'variable')?.text,
    );
    expect(params).toEqual([
      '$TenantId',
      '$AppId',
      '$Mailbox',
      '$AllowedFrom',
      '$AuthMode',
      '$PermissionModel',
      '$ManagedIdentityPrincipalId',
      '$ManagedIdentityTenantId',
      '$SkipConnect',
    ]);
    const authMode = nodes(paramBlock, 'script_parameter').find((p) => p.text.includes('$AuthMode'))!;
    const validateSet = /ValidateSet\(([^)]*)\)/.exec(authMode.text)![1]!;
    expect(validateSet.split(',').map((v) => v.trim().replace(/'/g, ''))).toEqual([...AUTH_MODES]);
    expect(authMode.text).toMatch(/=\s*'client-secret'$/);
  });

  it('every change to the tenant is behind ShouldProcess, and each is preceded by a read of the same state', () => {
    const root = parse(source);
    expect(unguardedChanges(root)).toEqual([]);
    const names = new Set(commands(root).map((c) => c.name));
    const changes = [...names].filter(isChange).sort();
    expect(changes).toEqual([
      'Add-MailboxPermission',
      'Add-RecipientPermission',
      'New-ManagementRoleAssignment',
      'New-ManagementScope',
      'New-MgApplicationFederatedIdentityCredential',
      'New-MgServicePrincipal',
      'New-MgServicePrincipalAppRoleAssignment',
      'New-ServicePrincipal',
      'Remove-ServicePrincipal',
      'Set-CASMailbox',
    ]);
    // Idempotent: the state each change makes is read first.
    const reads: Record<string, string> = {
      'Add-MailboxPermission': 'Get-MailboxPermission',
      'Add-RecipientPermission': 'Get-RecipientPermission',
      'New-ManagementRoleAssignment': 'Get-ManagementRoleAssignment',
      'New-ManagementScope': 'Get-ManagementScope',
      'New-MgApplicationFederatedIdentityCredential': 'Get-MgApplicationFederatedIdentityCredential',
      'New-MgServicePrincipal': 'Get-MgServicePrincipal',
      'New-MgServicePrincipalAppRoleAssignment': 'Get-MgServicePrincipalAppRoleAssignment',
      'New-ServicePrincipal': 'Get-ServicePrincipal',
      'Remove-ServicePrincipal': 'Get-ServicePrincipal',
      'Set-CASMailbox': 'Get-CASMailbox',
    };
    const line = (name: string) => commands(root).find((c) => c.name === name)!.node.startPosition.row;
    for (const change of changes) {
      expect(names.has(reads[change]!), `${change} reads ${reads[change]}`).toBe(true);
      expect(line(reads[change]!), `${reads[change]} before ${change}`).toBeLessThan(line(change));
    }
  });

  it('registers the Enterprise Application’s object id in Exchange, never the App Registration’s', () => {
    const root = parse(source);
    const registration = commands(root).find((c) => c.name === 'New-ServicePrincipal')!.node;
    expect(argument(registration, 'AppId')).toBe('$AppId');
    expect(argument(registration, 'ObjectId')).toBe('$servicePrincipal.Id');
    // $servicePrincipal only ever holds a service principal (the Enterprise Application), looked up by its AppId.
    const assigned = nodes(root, 'assignment_expression')
      .filter((a) => a.namedChildren[0]?.text === '$servicePrincipal')
      .map((a) => a.namedChildren.at(-1)!.text);
    expect(assigned.length).toBeGreaterThanOrEqual(2);
    for (const value of assigned) expect(value).toMatch(/^(\$null|(Get|New)-MgServicePrincipal\b)/);
    expect(source).toMatch(/Get-MgServicePrincipal -Filter "appId eq '\$AppId'"/);
  });

  it('grants what the sender needs: FullAccess (or the scoped SMTP role), Send As per From, SMTP AUTH on, consent for SMTP.SendAsApp', () => {
    const root = parse(source);
    const byName = (name: string) => commands(root).find((c) => c.name === name)!.node;
    expect(argument(byName('Add-MailboxPermission'), 'AccessRights')).toBe('FullAccess');
    const sendAs = byName('Add-RecipientPermission');
    expect([argument(sendAs, 'Trustee'), argument(sendAs, 'AccessRights')]).toEqual(['$Mailbox', 'SendAs']);
    expect(argument(byName('Set-CASMailbox'), 'SmtpClientAuthenticationDisabled')).toBe('$false');
    expect(argument(byName('New-ManagementRoleAssignment'), 'Role')).toBe('$RbacRole');
    expect(source).toMatch(/\$RbacRole = 'Application SMTP\.SendAsApp'/);
    expect(argument(byName('New-ManagementScope'), 'RecipientRestrictionFilter')).toBe(
      `"PrimarySmtpAddress -eq '$Mailbox'"`,
    );
    // Office 365 Exchange Online's well-known application id, whose SMTP.SendAsApp app role is consented.
    expect(source).toMatch(/\$ExchangeOnlineAppId = '00000002-0000-0ff1-ce00-000000000000'/);
    expect(source).toMatch(/\$SmtpPermission = 'SMTP\.SendAsApp'/);
  });

  it('adds the federated credential the templates describe: issuer, the managed identity as subject, the exchange audience', () => {
    const root = parse(source);
    const federated = commands(root).find((c) => c.name === 'New-MgApplicationFederatedIdentityCredential')!.node;
    const body = nodes(federated, 'hash_literal_expression')[0]!.text;
    expect(body).toMatch(/issuer\s+= \$issuer/);
    expect(body).toMatch(/subject\s+= \$ManagedIdentityPrincipalId/);
    expect(body).toMatch(/audiences\s+= @\(\$TokenExchangeAudience\)/);
    expect(source).toContain('$issuer = "https://login.microsoftonline.com/$issuerTenant/v2.0"');
    const audience = TOKEN_EXCHANGE_SCOPE.replace(/\/\.default$/, '');
    expect(source).toContain(`$TokenExchangeAudience = '${audience}'`);
    const main = readFileSync(path.resolve(__dirname, '../..', 'infra', 'main.bicep'), 'utf8');
    expect(main).toContain(`output FEDERATED_CREDENTIAL_AUDIENCE string = '${audience}'`);
    expect(main).toContain(
      "output FEDERATED_CREDENTIAL_ISSUER string = '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'",
    );
  });
});
