<#
.SYNOPSIS
Prepares a Microsoft 365 tenant for m365-mailer: the app's consent and Exchange service principal, mailbox and
Send As permissions, SMTP AUTH on the mailbox and, for federated-identity mode, the federated credential.

.DESCRIPTION
Idempotent: every step reads the current state first and changes only what is missing, so the script can be run
again after a partial run or to add an allowed From address. -WhatIf shows every change without making it.

Steps, in order:
  1. Microsoft Graph: the Enterprise Application (service principal) of the app registration is looked up by its
     AppId, and created if the tenant has none. Its object id is the one Exchange needs: the App Registration's
     object id is a different object, and registering that one is the classic cause of 535 5.7.3.
  2. MailboxPermission model: admin consent for Office 365 Exchange Online's SMTP.SendAsApp application permission
     (an app role assignment on the service principal). ApplicationRbac model: no Entra consent (an unscoped grant
     would bypass the scope); step 4 grants the role in Exchange, limited to the mailbox.
  3. Exchange Online: New-ServicePrincipal with the AppId and the Enterprise Application's object id.
  4. MailboxPermission: Add-MailboxPermission FullAccess for the service principal on the mailbox.
     ApplicationRbac: a management scope holding only the mailbox, and the 'Application SMTP.SendAsApp' role
     assigned to the service principal over that scope.
  5. Add-RecipientPermission SendAs for each allowed From address, with the mailbox as trustee.
  6. Set-CASMailbox -SmtpClientAuthenticationDisabled $false for the mailbox when SMTP AUTH is off for the tenant
     or the mailbox.
  7. federated-identity mode: a federated credential on the app registration for the Function App's managed
     identity (issuer https://login.microsoftonline.com/<tenant>/v2.0, subject its principal id, audience
     api://AzureADTokenExchange). No secret is needed in that mode.
basic mode (deprecated) needs only steps 5 and 6.

Requires the Microsoft.Graph.Applications and ExchangeOnlineManagement modules, and an account that is an Exchange
Administrator and may grant application permissions (Privileged Role Administrator or Global Administrator).

.EXAMPLE
./scripts/setup-exchange.ps1 -TenantId contoso.onmicrosoft.com -AppId 11111111-2222-3333-4444-555555555555 `
  -Mailbox alerts@contoso.com -AllowedFrom billing@contoso.com -WhatIf

.EXAMPLE
./scripts/setup-exchange.ps1 -TenantId $env:AZURE_TENANT_ID -AppId $env:MAIL_CLIENT_ID -Mailbox $env:MAIL_SENDER `
  -AuthMode federated-identity -ManagedIdentityPrincipalId $env:AZURE_MANAGED_IDENTITY_PRINCIPAL_ID
#>
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    # The tenant: its id (GUID) or primary domain (MAIL_TENANT_ID).
    [Parameter(Mandatory = $true)]
    [string]$TenantId,

    # The app registration's Application (client) ID (MAIL_CLIENT_ID). Not used in basic mode.
    [string]$AppId = '',

    # The mailbox the app authenticates as (MAIL_SENDER).
    [Parameter(Mandatory = $true)]
    [string]$Mailbox,

    # Addresses the mailbox may send as (MAIL_ALLOWED_FROM). @domain entries are reported, not granted.
    [string[]]$AllowedFrom = @(),

    # How the app authenticates (MAIL_AUTH_MODE).
    [ValidateSet('client-secret', 'client-certificate', 'federated-identity', 'basic')]
    [string]$AuthMode = 'client-secret',

    # How Exchange authorizes the app on the mailbox.
    [ValidateSet('MailboxPermission', 'ApplicationRbac')]
    [string]$PermissionModel = 'MailboxPermission',

    # federated-identity mode: the Function App's managed identity (azd output AZURE_MANAGED_IDENTITY_PRINCIPAL_ID).
    [string]$ManagedIdentityPrincipalId = '',

    # The tenant of the managed identity, when it is not -TenantId (its token issuer).
    [string]$ManagedIdentityTenantId = '',

    # Use the Graph and Exchange Online sessions already connected in this PowerShell session.
    [switch]$SkipConnect
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

# Office 365 Exchange Online's application id, the same in every tenant; SMTP.SendAsApp is one of its app roles.
$ExchangeOnlineAppId = '00000002-0000-0ff1-ce00-000000000000'
$SmtpPermission = 'SMTP.SendAsApp'
$RbacRole = 'Application SMTP.SendAsApp'
$TokenExchangeAudience = 'api://AzureADTokenExchange'

$oauth = $AuthMode -ne 'basic'
if ($oauth -and $AppId -notmatch '^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$') {
    throw "-AppId must be the app registration's Application (client) ID (a GUID) for -AuthMode $AuthMode."
}
if ($AuthMode -eq 'federated-identity' -and $ManagedIdentityPrincipalId -notmatch '^[0-9a-fA-F-]{36}$') {
    throw '-ManagedIdentityPrincipalId is required for -AuthMode federated-identity: the principal (object) id of the Function App''s managed identity (azd output AZURE_MANAGED_IDENTITY_PRINCIPAL_ID).'
}

function Write-Step([string]$Message) {
    Write-Host "==> $Message"
}

if (-not $SkipConnect) {
    if ($oauth) {
        Connect-MgGraph -TenantId $TenantId -Scopes 'Application.ReadWrite.All', 'AppRoleAssignment.ReadWrite.All' -NoWelcome
    }
    Connect-ExchangeOnline -ShowBanner:$false
}

$servicePrincipal = $null
if ($oauth) {
    # 1. The Enterprise Application: its object id, never the App Registration's, is what Exchange registers.
    Write-Step "Enterprise Application of app $AppId"
    $servicePrincipal = Get-MgServicePrincipal -Filter "appId eq '$AppId'" | Select-Object -First 1
    if (-not $servicePrincipal) {
        if ($PSCmdlet.ShouldProcess("app $AppId", 'Create the Enterprise Application (service principal)')) {
            $servicePrincipal = New-MgServicePrincipal -AppId $AppId
        }
    }
    if ($servicePrincipal) {
        $registration = Get-MgApplication -Filter "appId eq '$AppId'" | Select-Object -First 1
        Write-Host "    Enterprise Application object id: $($servicePrincipal.Id)"
        if ($registration) {
            Write-Host "    (App Registration object id, NOT used for Exchange: $($registration.Id))"
        }
    }

    # 2. Admin consent for SMTP.SendAsApp, unless Exchange's RBAC for Applications scopes the grant instead.
    if ($PermissionModel -eq 'MailboxPermission' -and $servicePrincipal) {
        Write-Step "Admin consent for $SmtpPermission"
        $exchange = Get-MgServicePrincipal -Filter "appId eq '$ExchangeOnlineAppId'" | Select-Object -First 1
        $role = $exchange.AppRoles | Where-Object { $_.Value -eq $SmtpPermission } | Select-Object -First 1
        $granted = Get-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $servicePrincipal.Id |
            Where-Object { $_.ResourceId -eq $exchange.Id -and $_.AppRoleId -eq $role.Id }
        if ($granted) {
            Write-Host "    already granted"
        }
        elseif ($PSCmdlet.ShouldProcess("app $AppId", "Grant admin consent for $SmtpPermission")) {
            New-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $servicePrincipal.Id -PrincipalId $servicePrincipal.Id `
                -ResourceId $exchange.Id -AppRoleId $role.Id | Out-Null
        }
    }

    # 3. The Exchange service principal, with the Enterprise Application's object id.
    Write-Step 'Exchange Online service principal'
    $objectId = if ($servicePrincipal) { $servicePrincipal.Id } else { '<created by this run>' }
    $exoPrincipal = Get-ServicePrincipal -Identity $AppId -ErrorAction SilentlyContinue
    if ($exoPrincipal -and $servicePrincipal -and $exoPrincipal.ObjectId -ne $servicePrincipal.Id) {
        # Registered earlier with the App Registration's object id: Exchange then refuses every token (535 5.7.3).
        Write-Warning "Exchange knows app $AppId under object id $($exoPrincipal.ObjectId), not the Enterprise Application's $($servicePrincipal.Id)."
        if ($PSCmdlet.ShouldProcess("Exchange service principal $($exoPrincipal.ObjectId)", 'Remove (wrong object id)')) {
            Remove-ServicePrincipal -Identity $exoPrincipal.Identity -Confirm:$false
            $exoPrincipal = $null
        }
    }
    if ($exoPrincipal) {
        Write-Host "    already registered as $($exoPrincipal.ObjectId)"
    }
    elseif ($PSCmdlet.ShouldProcess("app $AppId", "New-ServicePrincipal -ObjectId $objectId")) {
        $exoPrincipal = New-ServicePrincipal -AppId $AppId -ObjectId $servicePrincipal.Id -DisplayName "m365-mailer $AppId"
    }
    $exoIdentity = if ($exoPrincipal) { $exoPrincipal.Identity } else { $objectId }

    # 4. The app's right to the mailbox.
    if ($PermissionModel -eq 'MailboxPermission') {
        Write-Step "FullAccess on $Mailbox"
        $existing = Get-MailboxPermission -Identity $Mailbox -User $exoIdentity -ErrorAction SilentlyContinue |
            Where-Object { $_.AccessRights -contains 'FullAccess' }
        if ($existing) {
            Write-Host '    already granted'
        }
        elseif ($PSCmdlet.ShouldProcess($Mailbox, "Add-MailboxPermission FullAccess for $exoIdentity")) {
            Add-MailboxPermission -Identity $Mailbox -User $exoIdentity -AccessRights FullAccess | Out-Null
        }
    }
    else {
        $scopeName = "m365-mailer $Mailbox"
        Write-Step "Management scope '$scopeName' and role '$RbacRole'"
        $scope = Get-ManagementScope -Identity $scopeName -ErrorAction SilentlyContinue
        if (-not $scope -and $PSCmdlet.ShouldProcess($scopeName, 'New-ManagementScope (this mailbox only)')) {
            $scope = New-ManagementScope -Name $scopeName -RecipientRestrictionFilter "PrimarySmtpAddress -eq '$Mailbox'"
        }
        $assignment = Get-ManagementRoleAssignment -RoleAssignee $exoIdentity -Role $RbacRole -ErrorAction SilentlyContinue |
            Where-Object { $_.CustomResourceScope -eq $scopeName }
        if ($assignment) {
            Write-Host '    already assigned'
        }
        elseif ($PSCmdlet.ShouldProcess($scopeName, "New-ManagementRoleAssignment $RbacRole for $exoIdentity")) {
            New-ManagementRoleAssignment -App $exoIdentity -Role $RbacRole -CustomResourceScope $scopeName | Out-Null
        }
        if ($exoPrincipal) {
            Test-ServicePrincipalAuthorization -Identity $exoIdentity -Resource $Mailbox | Format-Table -AutoSize
        }
    }
}

# 5. Send As for every other allowed From address: the mailbox is the trustee.
# Entries may come one per argument or comma-separated, as MAIL_ALLOWED_FROM is written.
$fromAddresses = @($AllowedFrom | ForEach-Object { $_ -split ',' } | ForEach-Object { $_.Trim() } | Where-Object { $_ })
foreach ($entry in $fromAddresses) {
    if ($entry.StartsWith('@')) {
        Write-Warning "$entry is a whole domain: grant Send As on each address of it that the app sends from."
        continue
    }
    if ($entry -eq $Mailbox) {
        continue
    }
    Write-Step "Send As $entry"
    $sendAs = Get-RecipientPermission -Identity $entry -Trustee $Mailbox -ErrorAction SilentlyContinue |
        Where-Object { $_.AccessRights -contains 'SendAs' }
    if ($sendAs) {
        Write-Host '    already granted'
    }
    elseif ($PSCmdlet.ShouldProcess($entry, "Add-RecipientPermission SendAs for $Mailbox")) {
        Add-RecipientPermission -Identity $entry -Trustee $Mailbox -AccessRights SendAs -Confirm:$false | Out-Null
    }
}

# 6. SMTP AUTH: on for the mailbox when the tenant (or the mailbox itself) turns it off.
Write-Step "SMTP AUTH for $Mailbox"
$tenantDisabled = (Get-TransportConfig).SmtpClientAuthenticationDisabled
$mailboxSetting = (Get-CASMailbox -Identity $Mailbox).SmtpClientAuthenticationDisabled
if ($mailboxSetting -eq $false) {
    Write-Host '    already enabled for the mailbox'
}
elseif ($tenantDisabled -or $mailboxSetting -eq $true) {
    if ($PSCmdlet.ShouldProcess($Mailbox, 'Set-CASMailbox -SmtpClientAuthenticationDisabled $false')) {
        Set-CASMailbox -Identity $Mailbox -SmtpClientAuthenticationDisabled $false
    }
}
else {
    Write-Host '    enabled for the tenant, and the mailbox follows it'
}

# 7. federated-identity: the Function App's managed identity becomes a credential of the app registration.
if ($AuthMode -eq 'federated-identity') {
    $issuerTenant = if ($ManagedIdentityTenantId) { $ManagedIdentityTenantId } else { $TenantId }
    $issuer = "https://login.microsoftonline.com/$issuerTenant/v2.0"
    Write-Step "Federated credential for managed identity $ManagedIdentityPrincipalId"
    $registration = Get-MgApplication -Filter "appId eq '$AppId'" | Select-Object -First 1
    $credentials = Get-MgApplicationFederatedIdentityCredential -ApplicationId $registration.Id
    $match = $credentials | Where-Object {
        $_.Issuer -eq $issuer -and $_.Subject -eq $ManagedIdentityPrincipalId -and $_.Audiences -contains $TokenExchangeAudience
    }
    if ($match) {
        Write-Host "    already present ($($match.Name))"
    }
    elseif ($PSCmdlet.ShouldProcess("app registration $AppId", "Add federated credential (issuer $issuer, subject $ManagedIdentityPrincipalId)")) {
        New-MgApplicationFederatedIdentityCredential -ApplicationId $registration.Id -BodyParameter @{
            name        = "m365-mailer-$($ManagedIdentityPrincipalId.Substring(0, 8))"
            issuer      = $issuer
            subject     = $ManagedIdentityPrincipalId
            audiences   = @($TokenExchangeAudience)
            description = 'The m365-mailer Function App''s managed identity (MAIL_AUTH_MODE=federated-identity)'
        } | Out-Null
    }
}

Write-Step 'Done. Permission changes can take up to an hour to reach every Exchange server.'
