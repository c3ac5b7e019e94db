// m365-mailer on Azure Functions Flex Consumption (Node 22): identity, storage, Key Vault, monitoring, the app, and roles.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment: part of every resource name (through a hash) and the resource group name.')
param environmentName string

@minLength(1)
@description('Region of every resource; it must offer the Flex Consumption plan.')
@metadata({ azd: { type: 'location' } })
param location string

@description('Object id of the person or pipeline running azd (AZURE_PRINCIPAL_ID): gets Key Vault Secrets Officer to store the client secret or certificate. Empty: no assignment.')
param principalId string = ''

@description('What principalId is: User for a person running azd, ServicePrincipal for the CI/CD workflow.')
@allowed(['User', 'ServicePrincipal'])
param principalType string = 'User'

@description('Maximum instances of each per-function scale group (Flex Consumption). Exchange Online limits a mailbox to 3 SMTP sessions (MAIL_MAX_CONNECTIONS), so a fourth delivering instance could never open one: more instances do not raise a mailbox\'s rate (docs/pacing.md).')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 3

@description('Memory of each Flex Consumption instance, in MB.')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

// ---------------------------------------------------------------------------------------------------------------
// The app's settings (src/config.ts), with the app's defaults. MAIL_TLS_CA_FILE, MAIL_RATE_WINDOW_SECONDS and
// MAIL_DAILY_WINDOW_SECONDS exist for tests and the local sandbox and are never set in Azure.

@description('MAIL_SENDER: the mailbox (UPN) that authenticates, e.g. alerts@contoso.com.')
param mailSender string

@description('MAIL_ALLOWED_FROM: comma-separated addresses or @domain entries the mailbox may send as. Empty: the sender only.')
param mailAllowedFrom string = ''

@description('MAIL_AUTH_MODE: how the app authenticates to Exchange Online.')
@allowed(['client-secret', 'client-certificate', 'federated-identity', 'basic'])
param mailAuthMode string = 'client-secret'

@description('MAIL_TENANT_ID: the Microsoft 365 tenant (GUID or primary domain). Empty: the tenant of this subscription.')
param mailTenantId string = ''

@description('MAIL_CLIENT_ID: the app registration\'s Application (client) ID. Required for every mode except basic.')
param mailClientId string = ''

@description('MAIL_CLIENT_SECRET_NAME: the Key Vault secret holding the client secret (client-secret mode).')
param mailClientSecretName string = 'mail-client-secret'

@description('MAIL_CLIENT_CERT_NAME: the Key Vault secret holding the PEM or PFX client certificate (client-certificate mode).')
param mailClientCertName string = 'mail-client-cert'

@description('MAIL_PASSWORD_SECRET_NAME: the Key Vault secret holding the mailbox password (basic mode, deprecated).')
param mailPasswordSecretName string = 'mail-password'

@description('MAIL_AUTHORITY_HOST: the Entra ID authority; change only for a sovereign cloud.')
// The Microsoft 365 tenant's cloud, which need not be this deployment's: not environment()'s login endpoint.
#disable-next-line no-hardcoded-env-urls
param mailAuthorityHost string = 'https://login.microsoftonline.com'

@description('MAIL_SMTP_HOST')
param mailSmtpHost string = 'smtp.office365.com'

@description('MAIL_SMTP_PORT')
param mailSmtpPort int = 587

@description('MAIL_SMTP_SCOPE: the token scope for SMTP AUTH XOAUTH2.')
param mailSmtpScope string = 'https://outlook.office365.com/.default'

@description('MAIL_RATE_PER_MINUTE: Exchange Online allows 30 messages a minute per mailbox; never set it higher.')
param mailRatePerMinute int = 30

@description('MAIL_MAX_CONNECTIONS: Exchange Online allows 3 concurrent SMTP sessions per mailbox.')
param mailMaxConnections int = 3

@description('MAIL_DAILY_RECIPIENT_LIMIT: Exchange Online allows 10,000 recipients a day per mailbox.')
param mailDailyRecipientLimit int = 10000

@description('MAIL_MAX_RECIPIENTS: recipients per message (Exchange Online: at most 1000; 500 by default).')
param mailMaxRecipients int = 500

@description('MAIL_MAX_MESSAGE_BYTES: 35 MiB, Exchange Online\'s default send limit.')
param mailMaxMessageBytes int = 36700160

@description('MAIL_PACING: keep on in Azure; off only for benchmarks of the sender alone.')
@allowed(['on', 'off'])
param mailPacing string = 'on'

@description('MAIL_SEND_LEASE_SECONDS: how long a worker owns a message it is sending.')
param mailSendLeaseSeconds int = 300

@description('MAIL_RETRY_BACKOFF_SECONDS: the wait after a first transient failure, doubled per attempt (with jitter).')
@minValue(1)
param mailRetryBackoffSeconds int = 30

@description('MAIL_RETENTION_DAYS: status records, idempotency keys, payloads and batches go this long after their final state. The storage lifecycle rules delete leftover blobs 7 days later.')
@minValue(1)
param mailRetentionDays int = 30

@description('MAIL_UNSUBSCRIBE_BASE_URL: the public https base of the Function App for List-Unsubscribe links (e.g. https://<app>.azurewebsites.net). Empty: bulk mail is refused until it is set.')
param mailUnsubscribeBaseUrl string = ''

@description('MAIL_UNSUBSCRIBE_KEY_NAME: the Key Vault secret holding the key that signs unsubscribe links (create it before sending bulk mail: docs/unsubscribe.md).')
param mailUnsubscribeKeyName string = 'mail-unsubscribe-key'

@description('MAIL_DIGEST_SCHEDULE: when scheduled digests run, an NCRONTAB expression of six fields (seconds first), in UTC unless WEBSITE_TIME_ZONE is set.')
param mailDigestSchedule string = '0 0 7 * * *'

@description('MAIL_DIGEST_MAX_ITEMS: the items listed in one digest; the rest are counted as omitted.')
@minValue(1)
param mailDigestMaxItems int = 50

// ---------------------------------------------------------------------------------------------------------------

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var functionAppName = '${abbrs.webSitesFunctions}api-${resourceToken}'
// The Flex Consumption deployment package lives in a blob container of the app's own storage account.
var deploymentContainerName = 'app-package-${take(resourceToken, 7)}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}api-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    retentionDays: mailRetentionDays
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    identityPrincipalId: identity.outputs.principalId
    deployerPrincipalId: principalId
    deployerPrincipalType: principalType
  }
}

// Every setting the app reads (src/config.ts); values are strings, as app settings are.
var mailSettings = {
  MAIL_SENDER: mailSender
  MAIL_ALLOWED_FROM: mailAllowedFrom
  MAIL_AUTH_MODE: mailAuthMode
  MAIL_TENANT_ID: empty(mailTenantId) ? tenant().tenantId : mailTenantId
  MAIL_CLIENT_ID: mailClientId
  MAIL_KEY_VAULT_URL: keyVault.outputs.uri
  MAIL_CLIENT_SECRET_NAME: mailClientSecretName
  MAIL_CLIENT_CERT_NAME: mailClientCertName
  MAIL_PASSWORD_SECRET_NAME: mailPasswordSecretName
  MAIL_AUTHORITY_HOST: mailAuthorityHost
  MAIL_SMTP_HOST: mailSmtpHost
  MAIL_SMTP_PORT: string(mailSmtpPort)
  MAIL_SMTP_SCOPE: mailSmtpScope
  MAIL_RATE_PER_MINUTE: string(mailRatePerMinute)
  MAIL_MAX_CONNECTIONS: string(mailMaxConnections)
  MAIL_DAILY_RECIPIENT_LIMIT: string(mailDailyRecipientLimit)
  MAIL_MAX_RECIPIENTS: string(mailMaxRecipients)
  MAIL_MAX_MESSAGE_BYTES: string(mailMaxMessageBytes)
  MAIL_PACING: mailPacing
  MAIL_SEND_LEASE_SECONDS: string(mailSendLeaseSeconds)
  MAIL_RETRY_BACKOFF_SECONDS: string(mailRetryBackoffSeconds)
  MAIL_RETENTION_DAYS: string(mailRetentionDays)
  MAIL_UNSUBSCRIBE_BASE_URL: mailUnsubscribeBaseUrl
  MAIL_UNSUBSCRIBE_KEY_NAME: mailUnsubscribeKeyName
  MAIL_DIGEST_SCHEDULE: mailDigestSchedule
  MAIL_DIGEST_MAX_ITEMS: string(mailDigestMaxItems)
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    mailSettings: mailSettings
  }
  // The host starts with identity-based storage and AAD telemetry: its roles must exist before its first start.
  dependsOn: [rbac]
}

// For azd, the tenant script (scripts/setup-exchange.ps1) and the user.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output SERVICE_API_NAME string = api.outputs.name
output AZURE_FUNCTION_NAME string = api.outputs.name
output SERVICE_API_URI string = api.outputs.uri
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_ENDPOINT string = keyVault.outputs.uri
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output APPLICATIONINSIGHTS_CONNECTION_STRING string = monitoring.outputs.connectionString
output AZURE_MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_MANAGED_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output MAIL_SENDER string = mailSender
output MAIL_AUTH_MODE string = mailAuthMode
output MAIL_TENANT_ID string = mailSettings.MAIL_TENANT_ID
output MAIL_CLIENT_ID string = mailClientId
// federated-identity mode: the federated credential the tenant script adds to the app registration.
output FEDERATED_CREDENTIAL_ISSUER string = '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
output FEDERATED_CREDENTIAL_SUBJECT string = identity.outputs.principalId
output FEDERATED_CREDENTIAL_AUDIENCE string = 'api://AzureADTokenExchange'
