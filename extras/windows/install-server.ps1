<#
.SYNOPSIS
Installs modelrelay-server (the relay) as a Windows service that starts at
boot and is restarted when it fails.

.DESCRIPTION
Run as Administrator, from this folder. The service runs WinSW 2.x (the
Windows Service Wrapper), which starts modelrelay-server: the relay cannot
answer the Service Control Manager by itself (see service-common.ps1). The
relay's settings are environment variables, read from an env file (a copy of
extras/env/server.env.example with your values) into the service's
Environment value in the registry. To change them, edit the file and run this
script again: it updates the installed service and restarts it.

The relay keeps its state (the QUIC certificate, the SQLite API-key store) in
%ProgramData%\ModelRelay\NAME\data unless the file sets MODELRELAY_DATA_DIR.
It listens on 127.0.0.1:8080 unless the file sets LISTEN_ADDR; to let other
machines in, set LISTEN_ADDR=0.0.0.0:8080 and open the port in the firewall:
  New-NetFirewallRule -DisplayName 'ModelRelay relay' -Direction Inbound -Protocol TCP -LocalPort 8080 -Action Allow
(and the UDP port of QUIC_LISTEN_ADDR, if set).

.PARAMETER WrapperExe
The WinSW 2.x executable you downloaded (WinSW.NET461.exe or WinSW-x64.exe
from a 2.x release of the WinSW project); the script copies it.

.PARAMETER EnvFile
The relay's settings as VAR=value lines; WORKER_SECRET at least.

.PARAMETER Name
The service's name, also its account (NT SERVICE\NAME) and folders'.

.PARAMETER Binary
modelrelay-server.exe, where it is installed.

.EXAMPLE
.\install-server.ps1 -WrapperExe $HOME\Downloads\WinSW.NET461.exe -EnvFile .\server.env
#>
#Requires -RunAsAdministrator
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $WrapperExe,
    [Parameter(Mandatory)] [string] $EnvFile,
    [string] $Name = 'modelrelay-server',
    [string] $Binary = (Join-Path $env:ProgramFiles 'ModelRelay\modelrelay-server.exe')
)
Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'
. (Join-Path $PSScriptRoot 'service-common.ps1')

$variables = @(Read-EnvFile -Path $EnvFile)
if (-not ($variables | Where-Object { $_ -match '^WORKER_SECRET=.' })) {
    throw "$EnvFile does not set WORKER_SECRET; the relay does not start without it"
}
# The log files are plain text: no ANSI colour codes in them.
$defaults = [ordered]@{
    MODELRELAY_DATA_DIR = Join-Path (Get-ServiceFolder -Name $Name) 'data'
    NO_COLOR = '1'
}
$variables = Add-DefaultVariables -Entries $variables -Defaults $defaults

# A stop lets running requests finish for up to DRAIN_TIMEOUT_SECS (30 s); in
# the worst case the relay exits 2 x DRAIN_TIMEOUT_SECS + 11 s later. WinSW
# kills it after 90 s, as systemd's TimeoutStopSec; raise both together.
Install-RelayService -Name $Name `
    -Description 'ModelRelay relay: the OpenAI/Anthropic-compatible endpoint that workers connect out to' `
    -WrapperExe $WrapperExe -Binary $Binary `
    -Environment $variables -StopTimeoutSeconds 90
