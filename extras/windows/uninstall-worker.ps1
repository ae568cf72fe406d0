<#
.SYNOPSIS
Stops and removes the modelrelay-worker service that install-worker.ps1
installed.

.DESCRIPTION
Run as Administrator, from this folder. Stopping lets running requests finish
first. The service's folder under %ProgramData%\ModelRelay (logs, and the
worker.toml settings) is kept unless -RemoveData is given. The binary itself
is left where it is.

.PARAMETER Name
The service's name, as given to install-worker.ps1.

.PARAMETER RemoveData
Also delete the service's folder under %ProgramData%\ModelRelay.

.EXAMPLE
.\uninstall-worker.ps1
#>
#Requires -RunAsAdministrator
[CmdletBinding()]
param(
    [string] $Name = 'modelrelay-worker',
    [switch] $RemoveData
)
Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'
. (Join-Path $PSScriptRoot 'service-common.ps1')

Uninstall-RelayService -Name $Name -RemoveData:$RemoveData
