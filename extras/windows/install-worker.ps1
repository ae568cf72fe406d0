<#
.SYNOPSIS
Installs modelrelay-worker as a Windows service that starts at boot and is
restarted when it fails.

.DESCRIPTION
Run as Administrator, from this folder. The service runs WinSW 2.x (the
Windows Service Wrapper), which starts modelrelay-worker: the worker cannot
answer the Service Control Manager by itself (see service-common.ps1). The
worker's settings are a TOML file (a copy of extras/env/worker.toml.example),
copied to the service's private folder, %ProgramData%\ModelRelay\NAME\; to
change them later, edit that copy and run Restart-Service NAME, or run this
script again. Running it again for an installed service updates that service.

Several workers on one machine (one per GPU or backend): run it once per
worker with its own -Name and -ConfigFile.

.PARAMETER WrapperExe
The WinSW 2.x executable you downloaded (WinSW.NET461.exe or WinSW-x64.exe
from a 2.x release of the WinSW project); the script copies it.

.PARAMETER ConfigFile
The worker's settings (TOML): proxy_url, worker_secret, backend_url, models,
worker_name. Without worker_name the service sets WORKER_NAME to this
computer's name.

.PARAMETER Name
The service's name, also its account (NT SERVICE\NAME) and folders'.

.PARAMETER Binary
modelrelay-worker.exe, where it is installed.

.PARAMETER Environment
More environment variables for the worker (name to value); a variable wins
over the same setting in the TOML file.

.EXAMPLE
.\install-worker.ps1 -WrapperExe $HOME\Downloads\WinSW.NET461.exe -ConfigFile .\worker.toml
#>
#Requires -RunAsAdministrator
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $WrapperExe,
    [Parameter(Mandatory)] [string] $ConfigFile,
    [string] $Name = 'modelrelay-worker',
    [string] $Binary = (Join-Path $env:ProgramFiles 'ModelRelay\modelrelay-worker.exe'),
    [hashtable] $Environment = @{}
)
Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'
. (Join-Path $PSScriptRoot 'service-common.ps1')

if (-not (Test-Path -LiteralPath $ConfigFile -PathType Leaf)) {
    throw "no such file: $ConfigFile"
}
$source = (Resolve-Path -LiteralPath $ConfigFile).Path
$config = Join-Path (Get-ServiceFolder -Name $Name) 'worker.toml'

# The log files are plain text: no ANSI colour codes in them. Without a
# worker_name in the file, the relay shows this computer's name (the worker
# itself looks for HOSTNAME, which Windows does not set).
$defaults = [ordered]@{ NO_COLOR = '1' }
if (-not (Select-String -LiteralPath $source -Pattern '^\s*worker_name\s*=' -Quiet)) {
    $defaults['WORKER_NAME'] = $env:COMPUTERNAME
}
$variables = @($Environment.Keys | ForEach-Object { "$_=$($Environment[$_])" })
$variables = Add-DefaultVariables -Entries $variables -Defaults $defaults

# A stop gives running requests shutdown_timeout (30 s) and the link 10 s
# more; WinSW kills the worker after 60 s, as systemd's TimeoutStopSec.
Install-RelayService -Name $Name `
    -Description 'ModelRelay worker: serves a local model backend through a ModelRelay relay' `
    -WrapperExe $WrapperExe -Binary $Binary -Arguments "--config `"$config`"" `
    -Environment $variables -StopTimeoutSeconds 60 `
    -Prepare {
        # The settings hold the worker secret: the service may read them, no one else.
        if ($source -ne $config) {
            Copy-Item -LiteralPath $source -Destination $config -Force
        }
        Set-PrivateAccess -Path $config -Account "NT SERVICE\$Name" -Rights 'R'
        Write-Host "Settings: $config"
    }
